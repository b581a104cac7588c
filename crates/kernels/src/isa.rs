//! The SIMD instruction set our own loops run with, chosen once per process at run time.
//!
//! One binary serves every x86-64 CPU: the direct convolution kernels ([`crate::direct`]) are
//! compiled for AVX-512 and for AVX2 + FMA with `#[target_feature]`, and [`isa`] picks the best
//! the CPU has. `LONGTAIL_ISA=avx2` (or `scalar`) caps the choice, so both paths can be measured
//! on one AVX-512 machine; asking for more than the CPU has is an error ([`isa_from_env`]).
//!
//! The batch-norm, add + ReLU and max-pool loops are plain Rust compiled three times through
//! [`dispatch`], so every level computes the same operations in the same order: their results
//! are bit-identical across levels. [`with_isa`] forces a level on one thread (tests, benches).
//!
//! The `gemm` crate (our im2col convolutions, candle's matmul) does its own dispatch and is
//! built without its `x86-v4` feature, so it always runs its AVX2 + FMA kernels: with it on, a
//! 1024³ GEMM is faster on AVX-512 machines but the training step was not (kernels README).

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;

use crate::KernelError;

/// A SIMD level of our own kernels, from most to least capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No SIMD kernels of ours: convolutions go through im2col + `gemm` only.
    Scalar,
    /// 256-bit AVX2 with FMA (x86-64-v3).
    Avx2,
    /// 512-bit AVX-512F with AVX-512VL (every AVX-512 CPU since Skylake-SP; x86-64-v4).
    Avx512,
}

impl Isa {
    /// The best level this CPU supports.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The name `LONGTAIL_ISA` takes for this level.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Every level this CPU can run, best first (what the tests cover).
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .filter(|&i| i <= Isa::detected())
            .collect()
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The level asked for by `LONGTAIL_ISA` (`avx512`, `avx2` or `scalar`; unset: the detected
/// one). An unknown name, or a level above what the CPU has, is an error, so a binary can refuse
/// it at start-up with one clear line instead of silently measuring another path.
pub fn isa_from_env() -> Result<Isa, KernelError> {
    let detected = Isa::detected();
    let Some(value) = std::env::var_os("LONGTAIL_ISA") else {
        return Ok(detected);
    };
    let value = value.to_string_lossy().trim().to_ascii_lowercase();
    let asked = match value.as_str() {
        "" => return Ok(detected),
        "avx512" | "avx-512" | "avx512f" => Isa::Avx512,
        "avx2" => Isa::Avx2,
        "scalar" | "none" => Isa::Scalar,
        _ => return Err(KernelError::UnknownIsa { value }),
    };
    if asked > detected {
        return Err(KernelError::IsaUnsupported {
            asked: asked.name(),
            detected: detected.name(),
        });
    }
    Ok(asked)
}

/// The level our kernels use in this process: [`isa_from_env`], or the detected level when the
/// variable is invalid (binaries check [`isa_from_env`] first to report that).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| isa_from_env().unwrap_or_else(|_| Isa::detected()))
}

thread_local! {
    /// The level [`with_isa`] forces on this thread, if any.
    static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The level for an op called on this thread: the one [`with_isa`] forces, else [`isa`].
/// Read once at an op's entry (candle runs `cpu_fwd` on the calling thread) and passed down,
/// since the rayon workers doing the work do not see this thread's override.
pub(crate) fn current() -> Isa {
    FORCED.with(Cell::get).unwrap_or_else(isa)
}

/// Runs `f` with this crate's kernels at `level` for every op called on this thread inside it
/// (forward and backward alike), whatever `LONGTAIL_ISA` says; the previous level comes back
/// afterwards, also on panic. Ops started from another thread inside `f` (e.g. in
/// `pool.install`) are not affected. For tests and benchmarks comparing levels in one process.
///
/// Errors with [`KernelError::IsaUnsupported`] when the CPU lacks `level`.
pub fn with_isa<R>(level: Isa, f: impl FnOnce() -> R) -> Result<R, KernelError> {
    let detected = Isa::detected();
    if level > detected {
        return Err(KernelError::IsaUnsupported {
            asked: level.name(),
            detected: detected.name(),
        });
    }
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(Some(level))));
    Ok(f())
}

/// Runs `f` compiled for `isa`: its body (inlined here, with the plain-Rust loops it calls) is
/// code-generated once per level with `#[target_feature]`, so an `[f32; 16]` accumulator becomes
/// one AVX-512 register, two AVX2 ones or four SSE2 ones. The operations and their order are the
/// same on every level (Rust never fuses `a * b + c` into an FMA by itself), so results are
/// bit-identical across levels. `f` must be small glue around `#[inline]` loops: what LLVM does
/// not inline into the wrapper runs at baseline SSE2.
#[inline(always)]
pub(crate) fn dispatch<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match isa {
            // SAFETY: every `Isa` reaching the kernels is at most `Isa::detected()` (`isa`,
            // `with_isa` and `Isa::available` guarantee it), so the CPU has these features.
            Isa::Avx512 => return unsafe { avx512(f) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { avx2(f) },
            Isa::Scalar => {}
        }
    }
    let _ = isa;
    f()
}
