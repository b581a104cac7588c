//! Tests of the one-rank communicator (the MPI backend is tested under `mpirun` by the root
//! `dist` test binary).
