//! The NCCL backend: CUDA tensors reduced on the GPUs, the NCCL unique id carried from rank 0
//! to the others over MPI (as Horovod does), host-side collectives on MPI.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::mpi_backend::MpiComm;
use crate::{DistError, HostOps};

/// An NCCL communicator on this rank's GPU, with the MPI job that started it.
pub(crate) struct NcclComm {
    pub(crate) mpi: MpiComm,
    comm: Arc<Comm>,
    stream: Arc<CudaStream>,
}

impl NcclComm {
    pub(crate) fn init(timeout: Duration, device: &Device) -> Result<Self, DistError> {
        let mpi = MpiComm::init(timeout)?;
        let Device::Cuda(cuda) = device else {
            return Err(DistError::Setup(
                "--distributed nccl reduces CUDA tensors: pass --device cuda (each rank takes the GPU of its local rank)".into(),
            ));
        };
        // Rank 0 makes the unique id; MPI carries its 128 bytes to every rank.
        let mut bytes = [0f64; 128];
        if mpi.rank == 0 {
            let id = Id::new()
                .map_err(|e| DistError::Setup(format!("ncclGetUniqueId failed: {e:?}")))?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8 as f64;
            }
        }
        mpi.broadcast_f64(&mut bytes, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(bytes) {
            *c = b as u8 as std::ffi::c_char;
        }
        let stream = cuda.cuda_stream();
        let comm = Comm::from_rank(stream.clone(), mpi.rank, mpi.size, Id::uninit(internal))
            .map_err(|e| {
                DistError::Setup(format!(
                    "ncclCommInitRank failed on rank {} of {}: {e:?}",
                    mpi.rank, mpi.size
                ))
            })?;
        Ok(Self {
            mpi,
            comm: Arc::new(comm),
            stream,
        })
    }

    /// Waits for the work queued on the stream (the NCCL call) against the deadline.
    fn sync(&self, what: &str) -> Result<(), DistError> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| DistError::Setup(format!("cuda event: {e:?}")))?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(2);
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(DistError::Setup(format!("{what}: {e:?}"))),
            }
            if start.elapsed() > self.mpi.timeout {
                // NCCL cannot tell which peer is missing; MPI's liveness check can.
                self.mpi.barrier()?;
                eprintln!(
                    "error: rank {} of {}: NCCL {what} did not complete within the {:.0} s collective timeout; aborting the job",
                    self.mpi.rank,
                    self.mpi.size,
                    self.mpi.timeout.as_secs_f64()
                );
                self.mpi.abort(3);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    fn run(&self, tensors: &[Tensor], op: Op) -> Result<Vec<Tensor>, DistError> {
        if tensors.is_empty() {
            return Ok(vec![]);
        }
        // One flat f32 buffer on the GPU: one NCCL call per list.
        let flat = Tensor::cat(
            &tensors
                .iter()
                .map(|t| t.to_dtype(DType::F32)?.flatten_all())
                .collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?;
        let reduced = flat.apply_op1_no_bwd(&NcclOp {
            comm: Arc::clone(&self.comm),
            op,
        })?;
        self.sync(match op {
            Op::Sum => "all-reduce",
            Op::Broadcast(_) => "broadcast",
        })?;
        let mut at = 0;
        tensors
            .iter()
            .map(|t| {
                let n = t.elem_count();
                let part = reduced.narrow(0, at, n)?.reshape(t.shape())?;
                at += n;
                Ok(part.to_dtype(t.dtype())?)
            })
            .collect()
    }

    pub(crate) fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>, DistError> {
        self.run(tensors, Op::Sum)
    }

    pub(crate) fn broadcast(
        &self,
        tensors: &[Tensor],
        root: usize,
    ) -> Result<Vec<Tensor>, DistError> {
        self.run(tensors, Op::Broadcast(root))
    }
}

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Broadcast(usize),
}

/// An NCCL collective as a candle op on a contiguous f32 CUDA tensor (no gradient).
struct NcclOp {
    comm: Arc<Comm>,
    op: Op,
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL backend reduces CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((o1, o2)) = l.contiguous_offsets() else {
            candle_core::bail!("nccl: the flat buffer is not contiguous")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(o1..o2);
        let dev = s.device().clone();
        // SAFETY: every element is written by the collective before it is read.
        let mut dst = unsafe { dev.alloc::<f32>(o2 - o1) }?;
        let res = match self.op {
            Op::Sum => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Op::Broadcast(root) => self.comm.broadcast(Some(&src), &mut dst, root as i32),
        };
        res.map_err(|e| candle_core::Error::Cuda(format!("nccl: {e:?}").into()))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}
