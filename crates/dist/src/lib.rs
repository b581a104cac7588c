//! Data-parallel collectives for longtail: one [`Communicator`] whatever the backend.
//!
//! Three backends share one API (rank, world size, local rank, all-reduce of a list of tensors,
//! broadcast, barrier, and the few host-side collectives the epoch loop needs for metrics and
//! evaluation):
//!
//! - [`Backend::None`]: one process, no library. Every collective is the identity, so the
//!   training loop has a single code path.
//! - [`Backend::Mpi`] (feature `mpi`): ranks started by `mpirun` on one or several machines,
//!   tensors copied to the host and reduced by the system's MPI (OpenMPI through rsmpi).
//! - [`Backend::Nccl`] (feature `nccl`): CUDA tensors reduced on the GPUs by NCCL (through
//!   candle's `nccl` feature, cudarc's bindings); MPI starts the ranks and carries the NCCL
//!   unique id from rank 0 to the others, as Horovod does, and the host-side collectives.
//!
//! **Timeouts.** MPI has no timeout on a collective and NCCL's blocking wait has none either: a
//! rank that died or hangs would leave the others waiting for ever. Here every collective is
//! started non-blocking and polled against a deadline ([`Communicator::timeout`]). When it
//! passes, the waiting rank asks every other rank whether it is alive (a point-to-point message
//! that a rank waiting in a collective answers), prints one line naming the ranks that did not
//! answer, and aborts the whole job (`MPI_Abort`): after a collective that never completed, MPI
//! gives no way to go on. A rank killed outright is usually noticed earlier by `mpirun` itself,
//! which then ends the job and names the rank.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use longtail_dist::Communicator;
//! let comm = Communicator::local();
//! let g = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?;
//! let mean = comm.all_reduce_mean(&[g])?;
//! assert_eq!(mean[0].to_vec1::<f32>()?, [1., 2., 3.]);
//! assert_eq!((comm.rank(), comm.world_size()), (0, 1));
//! # Ok::<(), longtail_dist::DistError>(())
//! ```

#![deny(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

#[cfg(feature = "mpi")]
mod mpi_backend;
#[cfg(feature = "nccl")]
mod nccl_backend;

/// What can go wrong when setting up or using a [`Communicator`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// The backend was asked for but this binary was built without its cargo feature.
    #[error("--distributed {backend} needs a longtail built with `--features {feature}`")]
    NotBuilt {
        /// The backend asked for.
        backend: &'static str,
        /// The cargo feature that builds it.
        feature: &'static str,
    },
    /// The process was not started by a launcher the backend understands, or the library
    /// refused to start.
    #[error("{0}")]
    Setup(String),
    /// A backend name that is not `none`, `mpi` or `nccl`.
    #[error("unknown distributed backend `{0}` (expected none, mpi or nccl)")]
    UnknownBackend(String),
    /// Tensors of a collective disagree with what the operation needs.
    #[error("{0}")]
    BadInput(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Which library moves the data between ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// One process (the default).
    #[default]
    None,
    /// MPI ranks (`mpirun`), tensors reduced on the host.
    Mpi,
    /// MPI ranks, CUDA tensors reduced by NCCL.
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = DistError;
    fn from_str(s: &str) -> Result<Self, DistError> {
        match s {
            "none" | "" => Ok(Backend::None),
            "mpi" => Ok(Backend::Mpi),
            "nccl" => Ok(Backend::Nccl),
            _ => Err(DistError::UnknownBackend(s.into())),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::None => "none",
            Backend::Mpi => "mpi",
            Backend::Nccl => "nccl",
        })
    }
}

/// The default deadline of one collective (a rank that has not joined by then is named and the
/// job aborted): long enough for rank 0's checkpoint writes and an uneven evaluation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

enum Inner {
    Local,
    #[cfg(feature = "mpi")]
    Mpi(mpi_backend::MpiComm),
    #[cfg(feature = "nccl")]
    Nccl(nccl_backend::NcclComm),
}

/// A group of ranks training one model together (see the crate docs). Cheap to clone: clones
/// share the same connection.
///
/// With the `mpi` feature the connection is neither `Send` nor `Sync`: MPI is initialised
/// `MPI_THREAD_FUNNELED`, so a communicator must stay on the thread that created it. It is an
/// `Arc` (not an `Rc`) so that the one-process build stays `Send + Sync`.
#[derive(Clone)]
pub struct Communicator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("backend", &self.backend())
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .finish()
    }
}

impl Default for Communicator {
    fn default() -> Self {
        Self::local()
    }
}

impl Communicator {
    /// One rank alone: every collective returns its input.
    #[allow(clippy::arc_with_non_send_sync)] // see the type's docs
    pub fn local() -> Self {
        Self {
            inner: Arc::new(Inner::Local),
        }
    }

    /// Joins the job of `backend` (started by `mpirun` for MPI and NCCL) with `timeout` per
    /// collective. NCCL needs the CUDA `device` of this rank ([`cuda_ordinal`] picks it).
    /// MPI can be initialised once per process: a second MPI communicator is an error.
    pub fn init(backend: Backend, timeout: Duration, device: &Device) -> Result<Self, DistError> {
        let _ = device;
        let inner = match backend {
            Backend::None => Inner::Local,
            #[cfg(feature = "mpi")]
            Backend::Mpi => Inner::Mpi(mpi_backend::MpiComm::init(timeout)?),
            #[cfg(not(feature = "mpi"))]
            Backend::Mpi => {
                let _ = timeout;
                return Err(DistError::NotBuilt {
                    backend: "mpi",
                    feature: "mpi",
                });
            }
            #[cfg(feature = "nccl")]
            Backend::Nccl => Inner::Nccl(nccl_backend::NcclComm::init(timeout, device)?),
            #[cfg(not(feature = "nccl"))]
            Backend::Nccl => {
                return Err(DistError::NotBuilt {
                    backend: "nccl",
                    feature: "nccl",
                })
            }
        };
        #[allow(clippy::arc_with_non_send_sync)] // see the type's docs
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The backend this communicator runs on.
    pub fn backend(&self) -> Backend {
        match &*self.inner {
            Inner::Local => Backend::None,
            #[cfg(feature = "mpi")]
            Inner::Mpi(_) => Backend::Mpi,
            #[cfg(feature = "nccl")]
            Inner::Nccl(_) => Backend::Nccl,
        }
    }

    /// This process's rank, `0..world_size()`.
    pub fn rank(&self) -> usize {
        match &*self.inner {
            Inner::Local => 0,
            #[cfg(feature = "mpi")]
            Inner::Mpi(m) => m.rank,
            #[cfg(feature = "nccl")]
            Inner::Nccl(n) => n.mpi.rank,
        }
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        match &*self.inner {
            Inner::Local => 1,
            #[cfg(feature = "mpi")]
            Inner::Mpi(m) => m.size,
            #[cfg(feature = "nccl")]
            Inner::Nccl(n) => n.mpi.size,
        }
    }

    /// This process's rank among the ranks on its machine (the GPU it should use).
    pub fn local_rank(&self) -> usize {
        match &*self.inner {
            Inner::Local => 0,
            #[cfg(feature = "mpi")]
            Inner::Mpi(m) => m.local_rank,
            #[cfg(feature = "nccl")]
            Inner::Nccl(n) => n.mpi.local_rank,
        }
    }

    /// Whether this is rank 0 (the one that writes files and prints).
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The deadline of one collective ([`DEFAULT_TIMEOUT`] unless set at [`Communicator::init`]).
    pub fn timeout(&self) -> Duration {
        match &*self.inner {
            Inner::Local => DEFAULT_TIMEOUT,
            #[cfg(feature = "mpi")]
            Inner::Mpi(m) => m.timeout,
            #[cfg(feature = "nccl")]
            Inner::Nccl(n) => n.mpi.timeout,
        }
    }

    fn host(&self) -> Option<&dyn HostOps> {
        match &*self.inner {
            Inner::Local => None,
            #[cfg(feature = "mpi")]
            Inner::Mpi(m) => Some(m),
            #[cfg(feature = "nccl")]
            Inner::Nccl(n) => Some(&n.mpi),
        }
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        match self.host() {
            None => Ok(()),
            Some(h) => h.barrier(),
        }
    }

    /// The element-wise sum over ranks of each tensor (same shapes and dtypes on every rank, in
    /// the same order). The tensors travel as one flat buffer: one collective per call.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>, DistError> {
        match &*self.inner {
            Inner::Local => Ok(tensors.to_vec()),
            #[cfg(feature = "mpi")]
            Inner::Mpi(m) => host_collective(tensors, |buf| m.all_reduce_f64(buf)),
            #[cfg(feature = "nccl")]
            Inner::Nccl(n) => n.all_reduce_sum(tensors),
        }
    }

    /// The element-wise sum over ranks of `t`, as a differentiable op: the gradient reaching
    /// `t` on each rank is the sum over the ranks of the gradients of the result (what
    /// synchronised batch norm needs, as `torch.distributed.nn.all_reduce`). The backward
    /// collective runs inside `backward()`, which must then be called on every rank, on the
    /// thread that owns this communicator. One rank: `t` itself.
    pub fn all_reduce_sum_autograd(&self, t: &Tensor) -> Result<Tensor, DistError> {
        if self.world_size() == 1 {
            return Ok(t.clone());
        }
        let sum = self.all_reduce_sum(&[t.detach()])?.remove(0);
        // `sum + (g(t) − t)`: the value is exactly `sum` (g is the identity), the gradient flows
        // into `t` through g, whose backward sums it over the ranks.
        let tracked = t.apply_op1(SumGradsOverRanks {
            comm: self.clone(),
            thread: std::thread::current().id(),
        })?;
        Ok((sum + (tracked - t.detach())?)?)
    }

    /// The element-wise mean over ranks of each tensor (the data-parallel gradient average).
    pub fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>, DistError> {
        let w = self.world_size();
        if w == 1 {
            return Ok(tensors.to_vec());
        }
        self.all_reduce_sum(tensors)?
            .into_iter()
            .map(|t| Ok((t / w as f64)?))
            .collect()
    }

    /// Rank `root`'s tensors on every rank (the other ranks pass tensors of the same shapes and
    /// dtypes, whose values are ignored).
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>, DistError> {
        self.check_root(root)?;
        match &*self.inner {
            Inner::Local => Ok(tensors.to_vec()),
            #[cfg(feature = "mpi")]
            Inner::Mpi(m) => host_collective(tensors, |buf| m.broadcast_f64(buf, root)),
            #[cfg(feature = "nccl")]
            Inner::Nccl(n) => n.broadcast(tensors, root),
        }
    }

    /// Sums `values` over ranks, in place (counters and loss sums of an epoch).
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        match self.host() {
            None => Ok(()),
            Some(h) => h.all_reduce_f64(values),
        }
    }

    /// Overwrites `values` with rank `root`'s (the same length on every rank).
    pub fn broadcast_f64(&self, values: &mut [f64], root: usize) -> Result<(), DistError> {
        self.check_root(root)?;
        match self.host() {
            None => Ok(()),
            Some(h) => h.broadcast_f64(values, root),
        }
    }

    /// Every rank's `local` (the same length on every rank), concatenated in rank order.
    pub fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>, DistError> {
        match self.host() {
            None => Ok(local.to_vec()),
            Some(h) => h.all_gather_f32(local),
        }
    }

    /// Ends every rank of the job at once after printing `message` (prefixed by this rank)
    /// on stderr: what a rank does with an error the others cannot know about, so that they do
    /// not wait for it until their timeout. With one rank it exits with `code`.
    pub fn abort(&self, message: &str, code: i32) -> ! {
        eprintln!(
            "error: rank {} of {}: {message}",
            self.rank(),
            self.world_size()
        );
        match self.host() {
            None => std::process::exit(code),
            Some(h) => h.abort(code),
        }
    }

    fn check_root(&self, root: usize) -> Result<(), DistError> {
        if root >= self.world_size() {
            return Err(DistError::BadInput(format!(
                "root rank {root} is not below the world size {}",
                self.world_size()
            )));
        }
        Ok(())
    }
}

/// Host-side collectives of a multi-rank backend (MPI, and NCCL's MPI side).
trait HostOps {
    fn barrier(&self) -> Result<(), DistError>;
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<(), DistError>;
    fn broadcast_f64(&self, values: &mut [f64], root: usize) -> Result<(), DistError>;
    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>, DistError>;
    fn abort(&self, code: i32) -> !;
}

/// Runs a host collective `op` on `tensors` flattened into one buffer, and rebuilds them with
/// their shapes, dtypes and devices. f32 tensors are carried as f64 (exact), so one buffer type
/// serves every float dtype.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn host_collective(
    tensors: &[Tensor],
    op: impl FnOnce(&mut [f64]) -> Result<(), DistError>,
) -> Result<Vec<Tensor>, DistError> {
    let mut buf: Vec<f64> = Vec::with_capacity(tensors.iter().map(Tensor::elem_count).sum());
    for t in tensors {
        buf.extend(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
    }
    op(&mut buf)?;
    let mut at = 0;
    tensors
        .iter()
        .map(|t| {
            let n = t.elem_count();
            let part = Tensor::from_slice(&buf[at..at + n], t.shape(), t.device())?;
            at += n;
            Ok(part.to_dtype(t.dtype())?)
        })
        .collect()
}

/// The identity whose backward sums the incoming gradient over the ranks
/// ([`Communicator::all_reduce_sum_autograd`]).
struct SumGradsOverRanks {
    comm: Communicator,
    thread: std::thread::ThreadId,
}

// SAFETY: candle wants custom ops `Send + Sync` (the graph could in principle move between
// threads); the MPI connection inside `comm` is not, since MPI is initialised
// `MPI_THREAD_FUNNELED`. The op only touches `comm` in `bwd`, which checks that it runs on the
// thread that created the op (the communicator's), and errors otherwise.
unsafe impl Send for SumGradsOverRanks {}
unsafe impl Sync for SumGradsOverRanks {}

/// A contiguous copy of the tensor `s`/`l` describe, on its own device.
fn copy_storage<S>(s: &S, l: &candle_core::Layout) -> candle_core::Result<(S, candle_core::Shape)>
where
    S: candle_core::backend::BackendStorage,
    S::Device: candle_core::backend::BackendDevice<Storage = S>,
{
    use candle_core::backend::BackendDevice;
    let mut dst = s.device().zeros_impl(l.shape(), s.dtype())?;
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok((dst, l.shape().clone()))
}

impl candle_core::CustomOp1 for SumGradsOverRanks {
    fn name(&self) -> &'static str {
        "sum-gradients-over-ranks"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        copy_storage(s, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        copy_storage(s, l)
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if std::thread::current().id() != self.thread {
            candle_core::bail!(
                "a cross-rank sum was differentiated on another thread than its communicator's"
            );
        }
        let summed = self
            .comm
            .all_reduce_sum(std::slice::from_ref(grad))
            .map_err(candle_core::Error::wrap)?;
        Ok(summed.into_iter().next())
    }
}

/// The CUDA ordinal of this rank on its machine: `LOCAL_RANK` (torchrun), else
/// `OMPI_COMM_WORLD_LOCAL_RANK` (OpenMPI's `mpirun`), else `MV2_COMM_WORLD_LOCAL_RANK`
/// (MVAPICH), else `SLURM_LOCALID`, else 0; modulo `gpus` when given, so that N ranks share
/// fewer GPUs round-robin.
pub fn cuda_ordinal(gpus: Option<usize>) -> usize {
    let local = [
        "LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
    .unwrap_or(0);
    match gpus {
        Some(g) if g > 0 => local % g,
        _ => local,
    }
}

/// Whether this process was started by `mpirun` (OpenMPI, MPICH or a PMI launcher), so that
/// a program can tell a user who forgot `mpirun` what to type.
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MV2_COMM_WORLD_SIZE",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some())
}
