//! The NCCL backend on real GPUs: every collective the training loop uses, checked against
//! sums computed by hand. Start it under `mpirun -np N` with one GPU per rank (a single H100 or
//! H200 gives N = 1: NCCL refuses two ranks on one GPU). Without `mpirun` or a GPU it prints
//! why and passes, so that `cargo test --features nccl` stays usable on a build machine.

use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use longtail_dist::{cuda_ordinal, launched_by_mpi, Backend, Communicator};

#[test]
fn nccl_collectives_on_the_gpus() {
    if !launched_by_mpi() {
        eprintln!("skipped: start this test under mpirun (one rank per GPU)");
        return;
    }
    let dev = match Device::new_cuda(cuda_ordinal(None)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            return;
        }
    };
    let comm = Communicator::init(Backend::Nccl, Duration::from_secs(120), &dev).unwrap();
    let (rank, world) = (comm.rank(), comm.world_size());
    let w = world as f32;
    let r = rank as f32;

    // All-reduce of a list of tensors of several shapes (one flat NCCL call).
    let a = Tensor::new(&[1f32, 2., 3.], &dev)
        .unwrap()
        .affine((r + 1.) as f64, 0.)
        .unwrap();
    let b = Tensor::new(&[[r, -r], [1., 0.5]], &dev).unwrap();
    let s = comm.all_reduce_sum(&[a, b]).unwrap();
    let tri = w * (w + 1.) / 2.; // Σ (r + 1)
    assert_eq!(s[0].to_vec1::<f32>().unwrap(), [tri, 2. * tri, 3. * tri]);
    let rsum = w * (w - 1.) / 2.; // Σ r
    assert_eq!(
        s[1].to_vec2::<f32>().unwrap(),
        [[rsum, -rsum], [w, 0.5 * w]]
    );

    // The gradient average of the training loop.
    let g = Tensor::new(&[2f32 * (r + 1.)], &dev).unwrap();
    let m = comm.all_reduce_mean(&[g]).unwrap();
    assert_eq!(m[0].to_vec1::<f32>().unwrap(), [w + 1.]);

    // Broadcast from rank 0 (rank 0's weights at the start of a run).
    let x = Tensor::new(&[10f32 + r, 20. + r], &dev).unwrap();
    let x = comm.broadcast(&[x], 0).unwrap();
    assert_eq!(x[0].to_vec1::<f32>().unwrap(), [10., 20.]);

    // The differentiable sum of synchronised batch norm: value Σ_r v_r, gradient Σ_r c_r.
    let v = Var::new(&[1f32 + r, 3.], &dev).unwrap();
    let y = comm.all_reduce_sum_autograd(v.as_tensor()).unwrap();
    assert_eq!(y.to_vec1::<f32>().unwrap(), [w + rsum, 3. * w]);
    let c = Tensor::new(&[1f32, r + 1.], &dev).unwrap();
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    let gv = grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(gv, [w, tri]);

    // Host-side collectives (metrics, evaluation) over MPI.
    let mut counts = [1.0, r as f64];
    comm.all_reduce_f64(&mut counts).unwrap();
    assert_eq!(counts, [world as f64, rsum as f64]);
    comm.barrier().unwrap();
    println!(
        "nccl collectives ok on rank {rank} of {world} (cuda:{})",
        cuda_ordinal(None)
    );
}
