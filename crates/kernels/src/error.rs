//! The crate's error type.

use candle_core::DType;

/// Why a kernel refused its arguments.
///
/// Every entry point checks its arguments before touching data, so a bad call returns one of
/// these instead of panicking inside a kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A tensor does not have the rank the op needs (NCHW input, OIHW weight, per-channel vector).
    #[error("{op}: `{arg}` must have rank {want}, got shape {got:?}")]
    Rank {
        /// The public function that was called.
        op: &'static str,
        /// The argument's name.
        arg: &'static str,
        /// The rank the op needs.
        want: usize,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A conv's input channels do not match the weight's input channels times `groups`.
    #[error("conv2d: input has {x_channels} channels but weight expects {w_channels} per group x {groups} groups")]
    ChannelMismatch {
        /// Channels of the input `x` (dim 1).
        x_channels: usize,
        /// Input channels per group of the weight (dim 1).
        w_channels: usize,
        /// The `groups` argument.
        groups: usize,
    },
    /// `groups` is zero or does not divide the output channels.
    #[error("conv2d: {groups} groups do not divide {c_out} output channels")]
    Groups {
        /// The `groups` argument.
        groups: usize,
        /// Output channels of the weight (dim 0).
        c_out: usize,
    },
    /// A size argument that must be positive is zero.
    #[error("{op}: `{arg}` must be positive")]
    Zero {
        /// The public function that was called.
        op: &'static str,
        /// The argument's name.
        arg: &'static str,
    },
    /// The kernel is larger than the padded input, so the output would be empty.
    #[error("conv2d: kernel {kh}x{kw} does not fit input {h}x{w} with padding {padding}")]
    KernelTooLarge {
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// The `padding` argument.
        padding: usize,
    },
    /// A pooling window that PyTorch refuses: padding over half the kernel, or a kernel larger
    /// than the padded input.
    #[error("max_pool2d: kernel {kernel} with padding {padding} does not fit input {h}x{w} (need padding <= kernel/2 and kernel <= size + 2*padding)")]
    PoolWindow {
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Kernel size (square).
        kernel: usize,
        /// The `padding` argument.
        padding: usize,
    },
    /// Two tensors that must have the same shape do not.
    #[error("{op}: `{arg}` has shape {got:?}, expected {want:?}")]
    Shape {
        /// The public function that was called.
        op: &'static str,
        /// The argument's name.
        arg: &'static str,
        /// The shape the op needs.
        want: Vec<usize>,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// Arguments do not share one dtype.
    #[error("{op}: `{arg}` has dtype {got:?}, expected {want:?}")]
    DType {
        /// The public function that was called.
        op: &'static str,
        /// The argument's name.
        arg: &'static str,
        /// The dtype of the first argument.
        want: DType,
        /// The dtype that was passed.
        got: DType,
    },
    /// Arguments do not live on one device.
    #[error("{op}: `{arg}` is on a different device than the input")]
    Device {
        /// The public function that was called.
        op: &'static str,
        /// The argument's name.
        arg: &'static str,
    },
    /// Batch norm's `eps` is not a positive finite number.
    #[error("{op}: eps must be positive and finite, got {eps}")]
    Eps {
        /// The public function that was called.
        op: &'static str,
        /// The value passed.
        eps: f64,
    },
    /// Training-mode batch norm needs more than one value per channel (as PyTorch).
    #[error("batch_norm_train: need more than 1 value per channel, got {count}")]
    TooFewValues {
        /// N·H·W of the input.
        count: usize,
    },
    /// `LONGTAIL_ISA` names no known instruction set.
    #[error("LONGTAIL_ISA={value:?} is not an instruction set of ours: use avx512, avx2 or scalar (or unset it)")]
    UnknownIsa {
        /// The variable's value.
        value: String,
    },
    /// `LONGTAIL_ISA` asks for more than this CPU has.
    #[error("LONGTAIL_ISA={asked} but this CPU supports at most {detected}")]
    IsaUnsupported {
        /// The level asked for.
        asked: &'static str,
        /// The best level the CPU has.
        detected: &'static str,
    },
    /// An error from candle itself (allocation, a stock op on the fallback path, …).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<KernelError> for candle_core::Error {
    /// Lets callers whose functions return `candle_core::Result` use `?` on this crate's results.
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// `Result` with [`KernelError`].
pub type Result<T> = std::result::Result<T, KernelError>;
