//! Faster training on Burn's Flex CPU backend: batch-wide convolutions (im2col + one `gemm`
//! matrix product per layer and chunk, forward and both gradients), a one-pass LeakyReLU and a
//! two-pass training BatchNorm, each a Burn backend extension for `Flex` and `Autodiff<Flex>`
//! whose backward is made of the same kernels (so a gradient of a gradient, as in WGAN-GP,
//! runs through them too).
//!
//! Every entry point takes and returns Burn tensors and falls back to Burn's own op on any
//! other backend or dtype, so a model calls them unconditionally:
//!
//! - [`conv::conv2d`], [`conv::conv_transpose2d`]: drop-in for `burn::tensor::module::conv2d`
//!   and `conv_transpose2d` (groups 1, dilation 1);
//! - [`activation::leaky_relu`] (and [`activation::leaky_relu_backward`], the mask as a
//!   differentiable op for hand-written input gradients);
//! - [`norm::forward`]: `BatchNorm::forward` with the fused training path; its running
//!   variance is PyTorch's (unbiased batch variance) on every backend;
//! - [`pool::avg_pool_3x3`], [`pool::max_pool_3x3`]: the FID Inception's 3x3 average pool
//!   (stride 1, padding 1, padding out of the count) and max pools, as two separable passes;
//! - [`conv::conv2d_shift_relu`]: inference `relu(conv2d + shift)` in one pass over the
//!   output (a convolution with BatchNorm folded in).
//!
//! [`testing`] holds the checks this crate's tests run against Burn's ops, public so that a
//! model crate can run them on its own layer shapes, and a helper that reruns a test under
//! qemu-user's CPU models to reach the AVX2 and scalar paths.

/// Defines `fn $name(args)` that runs `$body` compiled for the widest vector level of this
/// CPU (AVX-512, AVX2, else the build's baseline; capped by [`simd`]), chosen at run time as
/// the gemm crate does:
/// the Winograd transforms' 16-lane operations then take one AVX-512 or two AVX2 instructions
/// instead of four SSE ones, and the element-wise loops vectorize at that width.
macro_rules! widest {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($a: $t),*) {
            #[inline(always)]
            fn inner($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($a: $t),*) {
                    inner($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($a: $t),*) {
                    inner($($a),*)
                }
                match $crate::simd() {
                    // SAFETY: simd() says AVX-512F only where this CPU has it.
                    $crate::Simd::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: simd() says AVX2 only where this CPU has AVX2 and FMA.
                    $crate::Simd::Avx2 => return unsafe { avx2($($a),*) },
                    $crate::Simd::Scalar => {}
                }
            }
            inner($($a),*)
        }
    };
}

pub mod activation;
pub mod conv;
mod flex;
pub mod norm;
pub mod pool;
#[doc(hidden)]
pub mod testing;
mod winograd;

/// Tensor buffers of up to tens of MiB are freed and allocated again every step. By default
/// glibc's malloc serves them with mmap and munmap (and trims its heap above 128 KiB), so every
/// step faults their pages in again; keeping them in the heap made a training iteration on Flex
/// 18% faster (0.83 vs 1.01 s at 32x32x3, sn; scripts/bench.py, issue 7). Each
/// process keeps its peak heap instead: still a third of PyTorch's RSS. Call it first thing
/// in `main`, before any thread starts (the binary and the benches do).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
    unsafe {
        // 32 MiB: glibc's largest accepted mmap threshold on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Runs `f` on one of the threads of rayon's global pool (built here, with `RAYON_NUM_THREADS`
/// threads or one per core, each with a main thread's 8 MiB stack) while the calling thread
/// waits, and returns what it returns.
///
/// Every parallel op (Flex's element-wise ops, the gemm crate's products, these kernels'
/// chunks) called from outside the pool injects its job and puts the caller to sleep until a
/// worker wakes it: two context switches per op, thousands per training step, while the two
/// workers spin beside the caller on a 2-core machine (at 32x32 `perf` put 10% of a step in
/// the kernel's scheduler). Called from a worker, an op splits across the pool directly.
/// Call it once, at the top of `main` (after [`keep_freed_memory`]).
pub fn on_pool_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when the global pool was built already (then it is used as it is).
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    rayon::scope(|_| f())
}

/// A vector level of x86-64 CPUs, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// The build's baseline (SSE2 on x86-64).
    Scalar,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

/// The environment variable that caps the vector level of this crate's own kernels
/// (`avx2` or `scalar`), so that one machine can time the narrower paths beside the widest.
pub const SIMD_ENV: &str = "BURN_FLEX_KERNELS_SIMD";

/// The widest vector level this crate's kernels use: the CPU's, capped by [`SIMD_ENV`] when
/// that is set (read once; a value other than `avx512`, `avx2` or `scalar` is reported on
/// stderr and ignored). The gemm crate's products follow the CPU and the build: AVX-512 only
/// with the `x86-v4` feature (on by default).
pub fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var(SIMD_ENV).as_deref() {
            Err(_) | Ok("") | Ok("avx512") => Simd::Avx512,
            Ok("avx2") => Simd::Avx2,
            Ok("scalar") => Simd::Scalar,
            Ok(other) => {
                eprintln!("warning: {SIMD_ENV}={other:?} is none of avx512, avx2, scalar: ignored");
                Simd::Avx512
            }
        };
        cpu_simd().min(cap)
    })
}

/// The widest vector level of this CPU.
pub(crate) fn cpu_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2;
        }
    }
    Simd::Scalar
}

/// The vector level of this process's kernels and matrix products: `AVX-512`, `AVX2` (with
/// FMA) or `scalar`, the narrower of [`simd`] and the gemm crate's (AVX-512 only with this
/// build's `x86-v4` feature; with it and `BURN_FLEX_KERNELS_SIMD=avx2` the products stay at
/// AVX-512 while this says AVX2). Speed figures are only comparable at the same level.
pub fn simd_level() -> &'static str {
    let gemm = if cfg!(feature = "x86-v4") {
        Simd::Avx512
    } else {
        Simd::Avx2
    };
    simd_name(simd().min(gemm))
}

/// How [`simd_level`] names a level.
pub(crate) fn simd_name(level: Simd) -> &'static str {
    match level {
        Simd::Avx512 => "AVX-512",
        Simd::Avx2 => "AVX2",
        Simd::Scalar => "scalar",
    }
}
