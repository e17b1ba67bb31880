//! The networks: the DCGAN [`Generator`], the [`Critic`] and its [`SpectralNorm`] layers.
//! Their convolutions, LeakyReLU and BatchNorm run through `burn_flex_kernels` (batch-wide
//! kernels on Flex, Burn's own ops on every other backend).

pub mod bound;
pub mod critic;
pub mod generator;
pub mod operator;
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

/// Every float parameter and state value of `module` (spectral-norm u, v and BatchNorm
/// statistics included), one vector per tensor, in visit order.
pub fn float_values<M: burn::module::Module>(module: &M) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::Tensor<D>>) {
            let values = p.val().into_data().convert::<f32>();
            self.0.push(values.try_to_vec().expect("f32 values"));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}
