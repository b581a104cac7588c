//! The MPI backend: ranks started by `mpirun`, collectives on host buffers, each polled against
//! a deadline (see the crate docs on timeouts).

use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::*;

use crate::{DistError, HostOps};

/// Tag of the liveness question a rank sends after its collective timed out.
const PING: i32 = 0x4c54_0001;
/// Tag of the answer.
const PONG: i32 = 0x4c54_0002;

/// One MPI job: this process's rank in `MPI_COMM_WORLD`.
pub(crate) struct MpiComm {
    // Dropped last: `MPI_Finalize`.
    _universe: Universe,
    world: SimpleCommunicator,
    pub(crate) rank: usize,
    pub(crate) size: usize,
    pub(crate) local_rank: usize,
    pub(crate) timeout: Duration,
}

impl MpiComm {
    /// `MPI_Init` (MPI is called from the main thread only: `MPI_THREAD_FUNNELED`).
    pub(crate) fn init(timeout: Duration) -> Result<Self, DistError> {
        if !crate::launched_by_mpi() {
            return Err(DistError::Setup(
                "--distributed mpi: this process was not started by mpirun; run `mpirun -np N longtail train --distributed mpi …`".into(),
            ));
        }
        if timeout.is_zero() {
            return Err(DistError::BadInput(
                "the collective timeout must be positive".into(),
            ));
        }
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| DistError::Setup("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        // The ranks that share this machine's memory, in world-rank order.
        let local_rank = world.split_shared(rank as i32).rank() as usize;
        Ok(Self {
            _universe: universe,
            world,
            rank,
            size,
            local_rank,
            timeout,
        })
    }

    /// Polls `req` until it completes, answering other ranks' liveness questions meanwhile;
    /// past the deadline, names the ranks that do not answer and aborts the job.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, what: &str, mut req: Request<'a, D, S>) {
        let start = Instant::now();
        let mut pause = Duration::from_micros(2);
        loop {
            match req.test() {
                Ok(_) => return,
                Err(r) => req = r,
            }
            self.answer_pings();
            if start.elapsed() > self.timeout {
                self.timed_out(what);
            }
            // Back off to at most 1 ms: an oversubscribed rank must not spin on a core the
            // others compute on.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    fn answer_pings(&self) {
        while let Some((msg, status)) = self
            .world
            .any_process()
            .immediate_matched_probe_with_tag(PING)
        {
            let (v, _) = msg.matched_receive::<u64>();
            self.world
                .process_at_rank(status.source_rank())
                .send_with_tag(&v, PONG);
        }
    }

    /// The deadline of collective `what` passed: asks every other rank whether it is alive
    /// (a rank waiting in a collective answers), prints which ranks did not answer, and aborts.
    fn timed_out(&self, what: &str) -> ! {
        for p in (0..self.size).filter(|&p| p != self.rank) {
            self.world
                .process_at_rank(p as i32)
                .send_with_tag(&(self.rank as u64), PING);
        }
        let mut answered = vec![false; self.size];
        answered[self.rank] = true;
        let grace = self.timeout.min(Duration::from_secs(5));
        let start = Instant::now();
        while start.elapsed() < grace && answered.iter().any(|a| !a) {
            self.answer_pings();
            while let Some((msg, status)) = self
                .world
                .any_process()
                .immediate_matched_probe_with_tag(PONG)
            {
                let _ = msg.matched_receive::<u64>();
                answered[status.source_rank() as usize] = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let missing: Vec<String> = (0..self.size)
            .filter(|&p| !answered[p])
            .map(|p| p.to_string())
            .collect();
        let why = if missing.is_empty() {
            "every rank answered a liveness check, so the ranks are running different collectives (a bug) or one is far slower than the others".to_string()
        } else {
            format!(
                "rank {} did not answer a liveness check within {:.0} s (dead, stopped or stuck)",
                missing.join(", rank "),
                grace.as_secs_f64()
            )
        };
        eprintln!(
            "error: rank {} of {}: {what} did not complete within the {:.0} s collective timeout: {why}; aborting the job",
            self.rank,
            self.size,
            self.timeout.as_secs_f64()
        );
        self.world.abort(3)
    }
}

impl HostOps for MpiComm {
    fn barrier(&self) -> Result<(), DistError> {
        self.wait("barrier", self.world.immediate_barrier());
        Ok(())
    }

    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        let send = values.to_vec();
        mpi::request::scope(|scope| {
            let req = self.world.immediate_all_reduce_into(
                scope,
                &send[..],
                values,
                SystemOperation::sum(),
            );
            self.wait("all-reduce", req);
        });
        Ok(())
    }

    fn broadcast_f64(&self, values: &mut [f64], root: usize) -> Result<(), DistError> {
        let root = self.world.process_at_rank(root as i32);
        mpi::request::scope(|scope| {
            let req = root.immediate_broadcast_into(scope, values);
            self.wait("broadcast", req);
        });
        Ok(())
    }

    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>, DistError> {
        // Lengths first (a mismatch would corrupt the gather): Σn and Σn² over ranks are
        // W·n and W·n² only when every rank has the same n.
        let n = local.len() as f64;
        let mut sums = [n, n * n];
        self.all_reduce_f64(&mut sums)?;
        let w = self.size as f64;
        if sums[0] * sums[0] != w * sums[1] {
            return Err(DistError::BadInput(format!(
                "all-gather needs the same length on every rank (rank {} has {})",
                self.rank,
                local.len()
            )));
        }
        let mut out = vec![0f32; local.len() * self.size];
        mpi::request::scope(|scope| {
            let req = self
                .world
                .immediate_all_gather_into(scope, local, &mut out[..]);
            self.wait("all-gather", req);
        });
        Ok(out)
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
