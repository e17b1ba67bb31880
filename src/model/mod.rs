//! The networks: the DCGAN [`Generator`], the [`Critic`] and its [`SpectralNorm`] layers.

pub mod activation;
pub mod conv;
pub mod critic;
pub mod flex;
pub mod generator;
pub mod norm;
pub mod spectral;

pub use critic::Critic;
pub use generator::Generator;
pub use spectral::SpectralNorm;

/// Number of stride-2 stages between 4x4 and `image_size`: log2(image_size / 4).
pub fn depth(image_size: usize) -> usize {
    assert!(
        image_size >= 8 && image_size.is_power_of_two(),
        "image size {image_size} must be a power of two >= 8"
    );
    (image_size / 4).trailing_zeros() as usize
}

/// Initializes every lazily initialized parameter of `module` now.
///
/// Burn initializes parameters on first use and shares that pending initialization between
/// clones, so a `clone().no_grad()` of a fresh module would switch off gradients of the
/// original too. The training loop takes untracked clones of both networks; after this call
/// every clone owns its tracking setting.
pub fn initialize_params<M: burn::module::Module>(module: &M) {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// The layers that the shipped configs (`configs/**/*.toml`) build, for the kernel tests.
#[cfg(test)]
pub(crate) mod shipped {
    /// Which op a layer is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// A critic convolution, 4x4 stride 2 pad 1: `size` -> `size / 2`.
        Conv,
        /// A generator transposed convolution, 4x4 stride 2 pad 1: `size` -> `2 * size`.
        ConvTranspose,
    }

    /// One layer at one batch size.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Layer {
        pub kind: Kind,
        pub batch: usize,
        pub c_in: usize,
        pub c_out: usize,
        /// Input side.
        pub size: usize,
    }

    /// Every distinct layer of every shipped config, at the config's batch size and twice it
    /// (under emulation, `WGAN_TRAIN_KERNEL_BATCH` alone: qemu is about 100x slower).
    pub fn layers() -> Vec<Layer> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&root) {
            let path = entry.expect("configs/ is readable").into_path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let config = crate::config::Config::load(&path, &[]).expect("a valid config");
            let batches = match std::env::var("WGAN_TRAIN_KERNEL_BATCH") {
                Ok(v) => vec![v.parse().expect("a batch size")],
                Err(_) => vec![config.train.batch_size, 2 * config.train.batch_size],
            };
            let (size, channels, m) = (config.data.image_size, config.data.channels, &config.model);
            let n = super::depth(size);
            let mut shapes = Vec::new();
            let (mut c, mut s) = (channels, size);
            for i in 0..n {
                shapes.push((Kind::Conv, c, m.d_width << i, s));
                (c, s) = (m.d_width << i, s / 2);
            }
            let (mut c, mut s) = (m.g_width << (n - 1), 4);
            for i in 0..n {
                let c_out = if i + 1 == n { channels } else { c / 2 };
                shapes.push((Kind::ConvTranspose, c, c_out, s));
                (c, s) = (c / 2, 2 * s);
            }
            for (kind, c_in, c_out, size) in shapes {
                for &batch in &batches {
                    let layer = Layer {
                        kind,
                        batch,
                        c_in,
                        c_out,
                        size,
                    };
                    if !out.contains(&layer) {
                        out.push(layer);
                    }
                }
            }
        }
        out
    }
}
