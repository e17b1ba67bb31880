//! The Inception network of the Fréchet Inception Distance: pytorch-fid's `InceptionV3` with
//! `use_fid_inception=True` (the TensorFlow graph of 2015-12-05, as `FIDInceptionA/C/E_1/E_2`
//! patch torchvision's blocks), up to its 2048-d pool3 features.
//!
//! The blocks follow Burn's `burn-train` `InceptionV3FeatureExtractor` (MIT/Apache-2.0); the
//! input handling is pytorch-fid's, not that extractor's: images in [0, 1] (grayscale repeated to
//! three channels), bilinear resize to 299 x 299 with `align_corners=False` ([`resize_bilinear`]),
//! then `2x - 1`. Average pools in the A, C and E_1 blocks leave padding out of the count;
//! Mixed_7c's pool is a max pool; BatchNorm's epsilon is 1e-3.
//!
//! Weights load strictly ([`InceptionV3::load`]) from pytorch-fid's
//! `pt_inception-2015-12-05-6726825d.pth` or from a safetensors file with the same (torchvision)
//! names: a tensor missing from the file or of another shape is an error that names it.

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::module::adaptive_avg_pool2d;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Side of the network's input images.
pub const INPUT_SIZE: usize = 299;
/// Length of the pool3 feature vector.
pub const FEATURES: usize = 2048;

/// Conv2d (no bias) + BatchNorm (eps 1e-3) + ReLU.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    conv: Conv2d,
    bn: BatchNorm,
    /// Zero padding `[rows, columns]`, the same on both sides.
    #[module(skip)]
    padding: [usize; 2],
}

impl BasicConv2d {
    /// `[B, c_in, h, w]` -> `[B, c_out, h', w']` with a `kernel` kernel, `stride` and `padding`.
    fn new(
        channels: [usize; 2],
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 2],
        device: &Device,
    ) -> Self {
        let [ph, pw] = padding;
        let conv = Conv2dConfig::new(channels, kernel)
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
            .with_bias(false)
            // He initialization keeps activations at scale through the 94 layers of a random
            // network (tests); real use loads the weights.
            .with_initializer(burn::nn::Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: false,
            })
            .init(device);
        Self {
            conv,
            bn: BatchNormConfig::new(channels[1])
                .with_epsilon(1e-3)
                .init(device),
            padding,
        }
    }

    /// A 1x1 convolution.
    fn one(c_in: usize, c_out: usize, device: &Device) -> Self {
        Self::new([c_in, c_out], [1, 1], 1, [0, 0], device)
    }

    /// Inference BatchNorm folded into the kernel, `w' = w * s` and `shift = beta - mean * s`
    /// with `s = gamma / sqrt(var + eps)` per output channel, then `relu(conv(x, w') + shift)`:
    /// on Flex one pass of the batch-wide im2col + gemm kernels of `burn-flex-kernels` (every
    /// kernel shape here: 1x1 to 5x5, 1x7/7x1, 1x3/3x1), Burn's own ops elsewhere.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let bn = &self.bn;
        let c = bn.gamma.dims()[0];
        let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt(); // [c]
        let shift = bn.beta.val() - bn.running_mean.value() * scale.clone(); // [c]
        let weight = self.conv.weight.val() * scale.reshape([c, 1, 1, 1]); // [c, c_in, kh, kw]
        let stride = self.conv.stride[0];
        burn_flex_kernels::conv::conv2d_shift_relu(x, weight, shift, stride, self.padding)
    }
}

/// 3x3 average pool, stride 1, padding 1, padding left out of the count (pytorch-fid's blocks):
/// two separable passes on Flex, Burn's `avg_pool2d` elsewhere.
fn avg_pool_3x3(x: Tensor<4>) -> Tensor<4> {
    burn_flex_kernels::pool::avg_pool_3x3(x)
}

/// 3x3 max pool, stride 2, no padding.
fn max_pool_3x3_s2(x: Tensor<4>) -> Tensor<4> {
    burn_flex_kernels::pool::max_pool_3x3(x, 2, 0)
}

/// Mixed_5b/c/d (`FIDInceptionA`).
#[derive(Module, Debug)]
pub struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(c: usize, pool_features: usize, device: &Device) -> Self {
        Self {
            branch1x1: BasicConv2d::one(c, 64, device),
            branch5x5_1: BasicConv2d::one(c, 48, device),
            branch5x5_2: BasicConv2d::new([48, 64], [5, 5], 1, [2, 2], device),
            branch3x3dbl_1: BasicConv2d::one(c, 64, device),
            branch3x3dbl_2: BasicConv2d::new([64, 96], [3, 3], 1, [1, 1], device),
            branch3x3dbl_3: BasicConv2d::new([96, 96], [3, 3], 1, [1, 1], device),
            branch_pool: BasicConv2d::one(c, pool_features, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self
            .branch5x5_2
            .forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_1.forward(x.clone());
        let b3 = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(b3));
        let bp = self.branch_pool.forward(avg_pool_3x3(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// Mixed_6a (torchvision's `InceptionB`, a reduction).
#[derive(Module, Debug)]
pub struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(c: usize, device: &Device) -> Self {
        Self {
            branch3x3: BasicConv2d::new([c, 384], [3, 3], 2, [0, 0], device),
            branch3x3dbl_1: BasicConv2d::one(c, 64, device),
            branch3x3dbl_2: BasicConv2d::new([64, 96], [3, 3], 1, [1, 1], device),
            branch3x3dbl_3: BasicConv2d::new([96, 96], [3, 3], 2, [0, 0], device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(bd));
        Tensor::cat(vec![b3, bd, max_pool_3x3_s2(x)], 1)
    }
}

/// Mixed_6b/c/d/e (`FIDInceptionC`).
#[derive(Module, Debug)]
pub struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7_1: BasicConv2d,
    branch7x7_2: BasicConv2d,
    branch7x7_3: BasicConv2d,
    branch7x7dbl_1: BasicConv2d,
    branch7x7dbl_2: BasicConv2d,
    branch7x7dbl_3: BasicConv2d,
    branch7x7dbl_4: BasicConv2d,
    branch7x7dbl_5: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(c: usize, c7: usize, device: &Device) -> Self {
        let row = |a, b| BasicConv2d::new([a, b], [1, 7], 1, [0, 3], device);
        let col = |a, b| BasicConv2d::new([a, b], [7, 1], 1, [3, 0], device);
        Self {
            branch1x1: BasicConv2d::one(c, 192, device),
            branch7x7_1: BasicConv2d::one(c, c7, device),
            branch7x7_2: row(c7, c7),
            branch7x7_3: col(c7, 192),
            branch7x7dbl_1: BasicConv2d::one(c, c7, device),
            branch7x7dbl_2: col(c7, c7),
            branch7x7dbl_3: row(c7, c7),
            branch7x7dbl_4: col(c7, c7),
            branch7x7dbl_5: row(c7, 192),
            branch_pool: BasicConv2d::one(c, 192, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = self.branch7x7_1.forward(x.clone());
        let b7 = self.branch7x7_3.forward(self.branch7x7_2.forward(b7));
        let bd = self.branch7x7dbl_1.forward(x.clone());
        let bd = self.branch7x7dbl_3.forward(self.branch7x7dbl_2.forward(bd));
        let bd = self.branch7x7dbl_5.forward(self.branch7x7dbl_4.forward(bd));
        let bp = self.branch_pool.forward(avg_pool_3x3(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// Mixed_7a (torchvision's `InceptionD`, a reduction).
#[derive(Module, Debug)]
pub struct InceptionD {
    branch3x3_1: BasicConv2d,
    branch3x3_2: BasicConv2d,
    branch7x7x3_1: BasicConv2d,
    branch7x7x3_2: BasicConv2d,
    branch7x7x3_3: BasicConv2d,
    branch7x7x3_4: BasicConv2d,
}

impl InceptionD {
    fn new(c: usize, device: &Device) -> Self {
        Self {
            branch3x3_1: BasicConv2d::one(c, 192, device),
            branch3x3_2: BasicConv2d::new([192, 320], [3, 3], 2, [0, 0], device),
            branch7x7x3_1: BasicConv2d::one(c, 192, device),
            branch7x7x3_2: BasicConv2d::new([192, 192], [1, 7], 1, [0, 3], device),
            branch7x7x3_3: BasicConv2d::new([192, 192], [7, 1], 1, [3, 0], device),
            branch7x7x3_4: BasicConv2d::new([192, 192], [3, 3], 2, [0, 0], device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self
            .branch3x3_2
            .forward(self.branch3x3_1.forward(x.clone()));
        let b7 = self.branch7x7x3_1.forward(x.clone());
        let b7 = self.branch7x7x3_3.forward(self.branch7x7x3_2.forward(b7));
        let b7 = self.branch7x7x3_4.forward(b7);
        Tensor::cat(vec![b3, b7, max_pool_3x3_s2(x)], 1)
    }
}

/// Mixed_7b (`FIDInceptionE_1`: average pool) and Mixed_7c (`FIDInceptionE_2`: max pool).
#[derive(Module, Debug)]
pub struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    /// Mixed_7c pools by max (stride 1, padding 1), Mixed_7b by average.
    #[module(skip)]
    max_pool: bool,
}

impl InceptionE {
    fn new(c: usize, max_pool: bool, device: &Device) -> Self {
        let row = |a, b| BasicConv2d::new([a, b], [1, 3], 1, [0, 1], device);
        let col = |a, b| BasicConv2d::new([a, b], [3, 1], 1, [1, 0], device);
        Self {
            branch1x1: BasicConv2d::one(c, 320, device),
            branch3x3_1: BasicConv2d::one(c, 384, device),
            branch3x3_2a: row(384, 384),
            branch3x3_2b: col(384, 384),
            branch3x3dbl_1: BasicConv2d::one(c, 448, device),
            branch3x3dbl_2: BasicConv2d::new([448, 384], [3, 3], 1, [1, 1], device),
            branch3x3dbl_3a: row(384, 384),
            branch3x3dbl_3b: col(384, 384),
            branch_pool: BasicConv2d::one(c, 192, device),
            max_pool,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(b3.clone()),
                self.branch3x3_2b.forward(b3),
            ],
            1,
        );
        let bd = self
            .branch3x3dbl_2
            .forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(bd.clone()),
                self.branch3x3dbl_3b.forward(bd),
            ],
            1,
        );
        let pooled = if self.max_pool {
            burn_flex_kernels::pool::max_pool_3x3(x, 1, 1)
        } else {
            avg_pool_3x3(x)
        };
        let bp = self.branch_pool.forward(pooled);
        Tensor::cat(vec![b1, b3, bd, bp], 1)
    }
}

/// Images in flight at once on the CPU, over all threads. The largest activation, Conv2d_2b's
/// `[n, 64, 147, 147]`, is 5.5 MB an image: at 5 images every activation stays below glibc's
/// 32 MiB mmap threshold (`burn_flex_kernels::keep_freed_memory`), so its memory comes back from
/// the heap instead of fresh pages that the kernel zeroes (15% of a 25-image batch's time in
/// `clear_page`, `perf`). Each image's features do not depend on the others in its pass.
pub const IMAGES_PER_PASS: usize = 5;

/// Images per pass of each of `threads` threads, each running its own share of a batch:
/// [`IMAGES_PER_PASS`] shared among them (at least one image).
pub fn images_per_pass(threads: usize) -> usize {
    (IMAGES_PER_PASS / threads.max(1)).max(1)
}

/// `threads` rayon pools of one thread each, made when first asked for and kept (their threads
/// keep the kernels' scratch buffers): [`InceptionV3::forward`] runs one share of a batch in
/// each, so that every kernel, matrix product and copy of that share runs serially on its thread.
fn single_thread_pools(threads: usize) -> Vec<Arc<rayon::ThreadPool>> {
    static POOLS: Mutex<Vec<Arc<rayon::ThreadPool>>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    while pools.len() < threads {
        let i = pools.len();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("inception-{i}"))
            .build()
            .expect("cannot start an Inception thread");
        pools.push(Arc::new(pool));
    }
    pools[..threads].to_vec()
}

/// Images per [`InceptionV3::forward`] when extracting features (`eval`, the benchmark's
/// example): at 1, 2 and 4 threads each thread's share (20, 10, 5 images) is whole passes of
/// [`images_per_pass`] (5, 2, 1), so that no short pass ends every batch.
pub const BATCH: usize = 20;

/// pytorch-fid's FID Inception, images -> pool3 features. Field names are torchvision's
/// (`Conv2d_1a_3x3` -> `conv2d_1a_3x3`), so that its state dict loads by name.
#[derive(Module, Debug)]
pub struct InceptionV3 {
    conv2d_1a_3x3: BasicConv2d,
    conv2d_2a_3x3: BasicConv2d,
    conv2d_2b_3x3: BasicConv2d,
    conv2d_3b_1x1: BasicConv2d,
    conv2d_4a_3x3: BasicConv2d,
    mixed_5b: InceptionA,
    mixed_5c: InceptionA,
    mixed_5d: InceptionA,
    mixed_6a: InceptionB,
    mixed_6b: InceptionC,
    mixed_6c: InceptionC,
    mixed_6d: InceptionC,
    mixed_6e: InceptionC,
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
}

impl InceptionV3 {
    /// The network with random weights (He-normal convolutions, BatchNorm at identity): only
    /// for tests and shapes; features need [`load`](Self::load)ed weights.
    pub fn new(device: &Device) -> Self {
        Self {
            conv2d_1a_3x3: BasicConv2d::new([3, 32], [3, 3], 2, [0, 0], device),
            conv2d_2a_3x3: BasicConv2d::new([32, 32], [3, 3], 1, [0, 0], device),
            conv2d_2b_3x3: BasicConv2d::new([32, 64], [3, 3], 1, [1, 1], device),
            conv2d_3b_1x1: BasicConv2d::one(64, 80, device),
            conv2d_4a_3x3: BasicConv2d::new([80, 192], [3, 3], 1, [0, 0], device),
            mixed_5b: InceptionA::new(192, 32, device),
            mixed_5c: InceptionA::new(256, 64, device),
            mixed_5d: InceptionA::new(288, 64, device),
            mixed_6a: InceptionB::new(288, device),
            mixed_6b: InceptionC::new(768, 128, device),
            mixed_6c: InceptionC::new(768, 160, device),
            mixed_6d: InceptionC::new(768, 160, device),
            mixed_6e: InceptionC::new(768, 192, device),
            mixed_7a: InceptionD::new(768, device),
            mixed_7b: InceptionE::new(1280, false, device),
            mixed_7c: InceptionE::new(2048, true, device),
        }
    }

    /// The network with the weights of `path`: pytorch-fid's `.pth` (a PyTorch pickle) or a
    /// `.safetensors` file with the same names. Strict: every tensor of the network must be in
    /// the file with its shape (the file's `fc.*` classifier, which FID does not use, may be there).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};
        if !path.is_file() {
            bail!(
                "Inception weights {} not found: run scripts/get-inception.sh, or pass pytorch-fid's \
                 pt_inception-2015-12-05-6726825d.pth",
                path.display()
            );
        }
        let remap = [(r"^Conv2d_", "conv2d_"), (r"^Mixed_", "mixed_")];
        let mut net = Self::new(device);
        let safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let result = if safetensors {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .with_key_remapping(remap[0].0, remap[0].1)
                .with_key_remapping(remap[1].0, remap[1].1)
                .allow_partial(true);
            net.load_from(&mut store)
                .map_err(|e| anyhow::anyhow!("{e}"))
        } else {
            let mut store = PytorchStore::from_file(path)
                .with_key_remapping(remap[0].0, remap[0].1)
                .with_key_remapping(remap[1].0, remap[1].1)
                .allow_partial(true);
            net.load_from(&mut store)
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
        .with_context(|| format!("cannot read Inception weights {}", path.display()))?;
        if let Some(error) = result.errors.first() {
            bail!("Inception weights {}: {error}", path.display());
        }
        if let Some((missing, _)) = result.missing.first() {
            bail!(
                "Inception weights {} lack tensor `{missing}` ({} missing in all): not pytorch-fid's \
                 FID Inception",
                path.display(),
                result.missing.len()
            );
        }
        Ok(net)
    }

    /// Writes the weights as [`load`](Self::load) reads them: safetensors with torchvision's
    /// names and PyTorch's BatchNorm names (`weight`, `bias`, `running_mean`, `running_var`).
    pub fn save(&self, path: &Path) -> Result<()> {
        use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
        let mut store = SafetensorsStore::from_bytes(None)
            .with_to_adapter(BurnToPyTorchAdapter)
            .with_key_remapping(r"^conv2d_", "Conv2d_")
            .with_key_remapping(r"^mixed_", "Mixed_");
        self.save_into(&mut store)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let bytes = store.get_bytes().map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::atomic::write_atomic(path, &bytes)
    }

    /// `[B, 3, 299, 299]` network input (in [-1, 1]) -> `[B, 2048]` pool3 features. On the CPU
    /// (Flex) each of rayon's threads takes an equal share of the batch and runs it alone, in
    /// passes of [`images_per_pass`] images. The per-layer parallelism this replaces (every
    /// layer split over the threads, with the serial work between layers, allocation, BatchNorm
    /// folding and concatenation, on one) scaled 1.6-1.8x from one thread to two; the shares
    /// scale about 2.2x on a 2-core Sapphire Rapids (README).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [batch, ..] = x.dims();
        let threads = rayon::current_num_threads();
        if x.device().inner() != Device::flex() || batch == 1 {
            return self.forward_pass(x);
        }
        if threads == 1 {
            return self.passes(x, IMAGES_PER_PASS);
        }
        let pools = single_thread_pools(threads);
        let share = batch.div_ceil(pools.len());
        let per_pass = images_per_pass(pools.len());
        let shares: Vec<Tensor<2>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..batch)
                .step_by(share)
                .zip(pools)
                .map(|(start, pool)| {
                    let x = x.clone().narrow(0, start, share.min(batch - start));
                    scope.spawn(move || pool.install(|| self.passes(x, per_pass)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        Tensor::cat(shares, 0)
    }

    /// `[B, 3, 299, 299]` -> `[B, 2048]` in passes of `per_pass` images, one after the other.
    fn passes(&self, x: Tensor<4>, per_pass: usize) -> Tensor<2> {
        let [batch, ..] = x.dims();
        if batch <= per_pass {
            return self.forward_pass(x);
        }
        let passes = (0..batch)
            .step_by(per_pass)
            .map(|s| self.forward_pass(x.clone().narrow(0, s, per_pass.min(batch - s))))
            .collect();
        Tensor::cat(passes, 0)
    }

    /// [`forward`](Self::forward) in one pass: `[B, 3, 299, 299]` -> `[B, 2048]`.
    fn forward_pass(&self, x: Tensor<4>) -> Tensor<2> {
        let [batch, ..] = x.dims();
        let x = self.conv2d_1a_3x3.forward(x);
        let x = self.conv2d_2a_3x3.forward(x);
        let x = max_pool_3x3_s2(self.conv2d_2b_3x3.forward(x));
        let x = self.conv2d_3b_1x1.forward(x);
        let x = max_pool_3x3_s2(self.conv2d_4a_3x3.forward(x));
        let x = self
            .mixed_5d
            .forward(self.mixed_5c.forward(self.mixed_5b.forward(x)));
        let x = self.mixed_6a.forward(x);
        let x = self.mixed_6c.forward(self.mixed_6b.forward(x));
        let x = self.mixed_6e.forward(self.mixed_6d.forward(x));
        let x = self.mixed_7a.forward(x);
        let x = self.mixed_7c.forward(self.mixed_7b.forward(x));
        adaptive_avg_pool2d(x, [1, 1]).reshape([batch, FEATURES])
    }

    /// `[B, C, H, W]` images in [0, 1] (C = 1 or 3) -> `[B, 2048]` features, as pytorch-fid's
    /// `InceptionV3(resize_input=True, normalize_input=True)`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward(preprocess(images))
    }
}

/// pytorch-fid's input: `[B, C, H, W]` in [0, 1] -> `[B, 3, 299, 299]` in [-1, 1] (grayscale
/// repeated to three channels, bilinear resize with `align_corners=False`, then `2x - 1`).
pub fn preprocess(images: Tensor<4>) -> Tensor<4> {
    let [_, channels, ..] = images.dims();
    let images = if channels == 1 {
        images.repeat_dim(1, 3)
    } else {
        images
    };
    resize_bilinear(images, INPUT_SIZE, INPUT_SIZE) * 2.0 - 1.0
}

/// `torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bilinear",
/// align_corners=False)` (no antialiasing): `[B, C, H, W]` -> `[B, C, out_h, out_w]`, as two
/// matrix products with the separable interpolation weights (Burn's `interpolate` aligns corners).
pub fn resize_bilinear(x: Tensor<4>, out_h: usize, out_w: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if (h, w) == (out_h, out_w) {
        return x;
    }
    let device = x.device();
    let rows = Tensor::<2>::from_data(
        TensorData::new(linear_weights(h, out_h), [out_h, h]),
        &device,
    );
    let cols = Tensor::<2>::from_data(
        TensorData::new(linear_weights(w, out_w), [out_w, w]),
        &device,
    );
    let x = x.reshape([b * c, h, w]);
    let x = x.matmul(cols.transpose().unsqueeze::<3>()); // [BC, H, out_w]
    let x = rows.unsqueeze::<3>().matmul(x); // [BC, out_h, out_w]
    x.reshape([b, c, out_h, out_w])
}

/// `[out, n]` row-major weights of 1-D linear interpolation from `n` to `out` samples with
/// PyTorch's half-pixel centres (`align_corners=False`): source `(o + 0.5) n / out - 0.5`,
/// clamped at 0 below and at the last sample above; in f32 as PyTorch's CPU kernel computes it
/// (the rounding of the source position is visible: ~4e-6 at 40 samples).
fn linear_weights(n: usize, out: usize) -> Vec<f32> {
    let scale = n as f32 / out as f32;
    let mut weights = vec![0.0f32; out * n];
    for o in 0..out {
        let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        let t = src - i0 as f32;
        weights[o * n + i0] += 1.0 - t;
        weights[o * n + i1] += t;
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Each image gets the features it gets through the network alone: on one thread in
    /// passes (a full pass, then 2), and on 2 and 3 threads in shares of the batch that do not
    /// divide evenly (passes of 2 and 1 images, short last passes and shares).
    #[test]
    fn passes_and_shares_give_each_image_its_own_features() {
        let device = Device::flex();
        let net = InceptionV3::new(&device);
        let n = IMAGES_PER_PASS + 2;
        let x = Tensor::<4>::random(
            [n, 3, INPUT_SIZE, INPUT_SIZE],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let alone: Vec<Tensor<2>> = (0..n)
            .map(|i| net.forward(x.clone().narrow(0, i, 1))) // [1, 2048]
            .collect();
        let scale = Tensor::cat(alone.clone(), 0)
            .abs()
            .max()
            .into_scalar::<f32>() as f64;
        assert!(scale > 0.0, "the features are not all zero");
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let batched = pool.install(|| net.forward(x.clone())); // [n, 2048]
            assert_eq!(batched.dims(), [n, FEATURES]);
            for (i, alone) in alone.iter().enumerate() {
                let diff = (batched.clone().narrow(0, i, 1) - alone.clone())
                    .abs()
                    .max()
                    .into_scalar::<f32>() as f64;
                assert!(
                    diff <= 1e-5 * scale,
                    "{threads} threads, image {i}: {diff} of {scale}"
                );
            }
        }
    }

    /// The images in flight over all threads stay within IMAGES_PER_PASS unless there are
    /// more threads than that, and one more image per thread would pass it; BATCH splits into
    /// whole passes at 1, 2 and 4 threads.
    #[test]
    fn passes_share_the_images_in_flight() {
        for threads in 1..=16 {
            let n = images_per_pass(threads);
            assert!(n >= 1, "{threads} threads");
            assert!(
                n * threads <= IMAGES_PER_PASS.max(threads),
                "{threads} threads: {n} images each"
            );
            assert!(
                (n + 1) * threads > IMAGES_PER_PASS,
                "{threads} threads: {n} images each"
            );
        }
        assert_eq!(images_per_pass(1), IMAGES_PER_PASS);
        assert_eq!(images_per_pass(0), IMAGES_PER_PASS);
        for threads in [1, 2, 4] {
            assert_eq!(
                (BATCH / threads) % images_per_pass(threads),
                0,
                "{threads} threads"
            );
        }
    }
}
