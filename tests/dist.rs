//! Data-parallel training over MPI (issue 19), under `mpirun -np 2 --oversubscribe` with one
//! thread per rank, on tiny data the tests write in the real IDX format. Built only with the
//! `mpi` feature (`cargo test --features mpi`, as CI does; needs `openmpi-bin`).
//!
//! The gradient test starts this same test binary under `mpirun`, filtered to itself, with
//! `LONGTAIL_DIST_CHILD` set; there it runs the rank side instead.
mod util;
use util::{longtail, stderr, stdout, tiny_config};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use longtail::train::dist::Backend;
use longtail::train::{all_reduce_grads, trainable_vars, Communicator};

/// `mpirun -np ranks` (one thread per rank, more ranks than cores allowed, root allowed: CI
/// runs as root) running `program args` in `dir`.
fn mpirun(dir: &Path, ranks: usize, program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "-np",
        &ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .args(["-x", "RAYON_NUM_THREADS=1", "-x", "LONGTAIL_DIST_CHILD"])
    .arg(program)
    .args(args)
    .current_dir(dir)
    .env("RAYON_NUM_THREADS", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn longtail_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_longtail"))
}

fn safetensors_bytes(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_for(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Waits until `metrics` holds `n` lines (epochs), failing after five minutes.
fn wait_epochs(metrics: &Path, n: usize) {
    let t0 = Instant::now();
    while lines(metrics) < n {
        assert!(t0.elapsed().as_secs() < 300, "no epoch finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two ranks with 64 images each average to exactly the one-rank gradient of the 128 images
/// when batch norm is in eval mode or synchronised (`--sync-bn`); in train mode with per-rank
/// batch norm (the default) they do not, since each rank normalises with its own half's
/// statistics.
#[test]
fn two_ranks_of_64_average_to_the_one_rank_gradient_of_128() {
    if std::env::var_os("LONGTAIL_DIST_CHILD").is_some() {
        return rank_side_of_the_gradient_test();
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let o = mpirun(
        dir.path(),
        2,
        &exe,
        &[
            "--exact",
            "two_ranks_of_64_average_to_the_one_rank_gradient_of_128",
            "--nocapture",
            "--test-threads",
            "1",
        ],
    )
    .env("LONGTAIL_DIST_CHILD", "1")
    .output()
    .unwrap();
    let err = stderr(&o);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{err}");
    // Both ranks ran the comparison (each prints its line).
    for r in 0..2 {
        for what in ["eval-mode", "sync-BN train-mode"] {
            assert!(
                out.contains(&format!("rank {r} of 2: {what} gradients equal")),
                "{out}\n{err}"
            );
        }
    }
}

/// The rank side of the test above, in each rank `mpirun` started.
fn rank_side_of_the_gradient_test() {
    let dev = Device::Cpu;
    let comm = Communicator::init(Backend::Mpi, Duration::from_secs(120), &dev).unwrap();
    let (rank, world) = (comm.rank(), comm.world_size());
    assert_eq!(world, 2);
    let cfg = longtail::registry::preset("ride.fmnist-lt").unwrap();
    let (varmap, model) =
        longtail::backbone::MultiExpert::seeded(&cfg.model, cfg.seed, &dev).unwrap();
    let params = trainable_vars(&varmap);
    // The same 128 images and labels on every rank (a seeded draw).
    let n = 128;
    let c = cfg.model.in_channels;
    let x = {
        let mut s = 12345u64;
        let v: Vec<f32> = (0..n * c * 28 * 28)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, (n, c, 28, 28), &dev).unwrap()
    };
    let y = Tensor::from_vec(
        (0..n as u32).map(|i| (i * 7 + 3) % 10).collect::<Vec<_>>(),
        n,
        &dev,
    )
    .unwrap();
    let grads = |x: &Tensor, y: &Tensor, train: bool| -> Vec<Option<Tensor>> {
        let out = model.forward_t(x, train).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.logits, y).unwrap();
        let store = loss.backward().unwrap();
        params
            .iter()
            .map(|(_, v)| store.get(v.as_tensor()).cloned())
            .collect()
    };
    let max_diff = |a: &[Option<Tensor>], b: &[Option<Tensor>]| -> f32 {
        let mut m = 0f32;
        for (a, b) in a.iter().zip(b) {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let d = (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    m = m.max(d);
                }
                (None, None) => {}
                _ => panic!("a gradient is present on one side only"),
            }
        }
        m
    };
    let half = n / world;
    let (xs, ys) = (
        x.narrow(0, rank * half, half).unwrap(),
        y.narrow(0, rank * half, half).unwrap(),
    );
    for train in [false, true] {
        let one_rank = grads(&x, &y, train);
        let mine = grads(&xs, &ys, train);
        let two_ranks = all_reduce_grads(&comm, &params, mine).unwrap();
        let d = max_diff(&one_rank, &two_ranks);
        if train {
            assert!(
                d > 1e-4,
                "per-rank batch norm should change the gradient (max diff {d})"
            );
            println!("rank {rank} of {world}: train-mode gradients differ by {d:e} (per-rank BN)");
        } else {
            assert!(
                d <= 1e-5,
                "eval-mode gradients differ by {d} between 1 rank × 128 and 2 ranks × 64"
            );
            println!("rank {rank} of {world}: eval-mode gradients equal (max diff {d:e})");
        }
    }
    // Synchronised batch norm (--sync-bn): the 2 × 64 gradient is the 1 × 128 train-mode one,
    // computed the same way (a synchronised layer over one process is plain train-mode batch
    // norm, in f64). Against the fused f32 kernels the two differ by more than rounding: one
    // activation within rounding of zero, on the other side of a ReLU, moves a weight gradient
    // by ~1e-4 (seen when the kernels' per-plane sums went from 8 to 16 lanes).
    let reference = {
        let _sync = longtail::train::SyncBatchNorm::enable(&Communicator::local());
        grads(&x, &y, true)
    };
    let synced = {
        let _sync = longtail::train::SyncBatchNorm::enable(&comm);
        let mine = grads(&xs, &ys, true);
        all_reduce_grads(&comm, &params, mine).unwrap()
    };
    let d = max_diff(&reference, &synced);
    assert!(
        d <= 1e-5,
        "sync-BN gradients differ by {d} between 1 rank × 128 and 2 ranks × 64"
    );
    println!("rank {rank} of {world}: sync-BN train-mode gradients equal (max diff {d:e})");
    comm.barrier().unwrap();
}

/// A 2-rank run killed mid-training (every rank, SIGKILL) and resumed on 2 ranks ends with
/// exactly the weights and metrics of an uninterrupted 2-rank run; resuming it on one process
/// is refused with one clear line.
#[test]
fn a_killed_two_rank_run_resumes_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = tiny_config(p, "ride", 4, 40);
    let cfg = cfg.to_str().unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--distributed",
            "mpi",
            "--config",
            cfg,
            "--out",
            out,
            "--quiet",
        ];
        args.extend_from_slice(extra);
        mpirun(p, 2, &longtail_bin(), &args)
    };
    let o = train("straight", &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&p.join("straight/metrics.jsonl")), 4);

    // The whole job killed at once: mpirun and its ranks (OpenMPI gives each rank its own
    // process group, so they are found as mpirun's children).
    let mut child = train("killed", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = p.join("killed/metrics.jsonl");
    wait_epochs(&metrics, 1);
    let mut pids = children(child.id());
    assert_eq!(pids.len(), 2, "expected two ranks under mpirun");
    pids.push(child.id());
    let k = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .status()
        .unwrap();
    assert!(k.success());
    child.wait().unwrap();
    // The ranks are gone (reaped by init) before anything looks at the run's lock.
    let t0 = Instant::now();
    while pids
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the killed ranks did not go away"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = lines(&metrics);
    assert!(done < 4, "the run finished before it could be killed");

    // One process cannot continue a 2-rank run.
    let o = longtail(
        p,
        &[
            "train", "--config", cfg, "--out", "killed", "--resume", "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("trained on 2 ranks"), "{e}");
    assert_eq!(
        e.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{e}"
    );

    let o = train("killed", &["--resume"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let a = safetensors_bytes(&p.join("straight/last.safetensors"));
    let b = safetensors_bytes(&p.join("killed/last.safetensors"));
    assert_eq!(a.len(), b.len());
    for (name, bytes) in &a {
        assert!(b[name] == *bytes, "{name} differs after resume");
    }
    assert_eq!(
        std::fs::read_to_string(p.join("straight/metrics.jsonl")).unwrap(),
        std::fs::read_to_string(&metrics).unwrap(),
    );
}

/// Killing one rank of a running job ends the other one with an error naming the dead rank
/// (well within the collective timeout), never a hang.
#[test]
fn killing_one_rank_ends_the_job_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = tiny_config(p, "ride", 50, 40);
    let cfg = cfg.to_str().unwrap();
    let child = mpirun(
        p,
        2,
        &longtail_bin(),
        &[
            "train",
            "--distributed",
            "mpi",
            "--dist-timeout",
            "30",
            "--config",
            cfg,
            "--out",
            "run",
            "--quiet",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_epochs(&p.join("run/metrics.jsonl"), 1);
    // The rank-1 process among mpirun's children (OpenMPI sets its rank in the environment).
    let rank1 = (0..200)
        .find_map(|_| {
            let found = children(child.id()).into_iter().find(|pid| {
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv == b"OMPI_COMM_WORLD_RANK=1")
                })
            });
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        })
        .expect("no rank-1 process under mpirun");
    let t0 = Instant::now();
    assert!(Command::new("kill")
        .args(["-KILL", &rank1.to_string()])
        .status()
        .unwrap()
        .success());
    let o = wait_for(child, Duration::from_secs(60));
    assert!(!o.status.success(), "the job went on without rank 1");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("rank 1"), "the dead rank is not named: {all}");
    assert!(lines(&p.join("run/metrics.jsonl")) < 50);
}

/// The process ids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the fields after the last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// `--distributed mpi` outside `mpirun` is one clear error, not a hang or a crash.
#[test]
fn distributed_without_mpirun_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "ride", 1, 40);
    let o = longtail(
        dir.path(),
        &[
            "train",
            "--distributed",
            "mpi",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("mpirun -np"), "{e}");
    assert!(!dir.path().join("run").exists());
}

/// `--sync-bn` trains over 2 ranks, is recorded in the run's config (so a resume must ask for it
/// again), and without `--distributed` is one clear error.
#[test]
fn sync_bn_trains_over_two_ranks_and_needs_distributed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = tiny_config(p, "ride", 2, 40);
    let cfg = cfg.to_str().unwrap();
    let args = [
        "train",
        "--distributed",
        "mpi",
        "--sync-bn",
        "--config",
        cfg,
        "--out",
        "synced",
        "--quiet",
    ];
    let o = mpirun(p, 2, &longtail_bin(), &args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&p.join("synced/metrics.jsonl")), 2);
    let config = std::fs::read_to_string(p.join("synced/config.toml")).unwrap();
    assert!(config.contains("sync_bn = true"), "{config}");

    let o = longtail(
        p,
        &["train", "--sync-bn", "--config", cfg, "--out", "alone"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--sync-bn"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--distributed"), "{}", stderr(&o));
    assert!(!p.join("alone").exists());
}
