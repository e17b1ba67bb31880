//! The exponential moving average (EMA) of the generator's weights, which sample grids,
//! `sample`, `export` and the metrics use when `train.ema_decay > 0` (Karras et al. 2018,
//! ProGAN; Brock et al. 2019, BigGAN; Yazıcı et al. 2019, "The Unusual Effectiveness of
//! Averaging in GAN Training").
//!
//! After generator iteration t: `ema = decay * ema + (1 - decay) * G` for every trainable
//! parameter, and `ema = G` while `t <= ema_start`. BatchNorm's running statistics are not
//! averaged but copied from G after each iteration, as StudioGAN's `Ema` does with every buffer
//! (BigGAN-PyTorch averages them like weights; the copied ones are the statistics G's own
//! inference uses, gathered on G's batches).

use crate::model::Generator;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// The decay used after generator iteration `step`: 0 (a copy) up to `start`, `decay` after.
pub fn decay_at(step: usize, decay: f64, start: usize) -> f64 {
    if step <= start { 0.0 } else { decay }
}

/// `decay * ema + (1 - decay) * generator` for every parameter, BatchNorm running statistics
/// copied from `generator`. `ema` lives on the plain (non-autodiff) device, as
/// `generator.valid()` does; so does the result.
pub fn update(ema: Generator, generator: &Generator, decay: f64) -> Generator {
    let mut collect = Collect(Vec::new());
    generator.valid().visit(&mut collect);
    ema.map(&mut Average {
        sources: collect.0.into_iter(),
        decay,
        path: Vec::new(),
    })
}

/// Names of the BatchNorm buffers that are copied, not averaged.
const BUFFERS: [&str; 2] = ["running_mean", "running_var"];

/// Every float tensor of a module, flattened, in visit order.
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

struct Average {
    sources: std::vec::IntoIter<Tensor<1>>,
    decay: f64,
    path: Vec<String>,
}

impl ModuleMapper for Average {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let source = self
            .sources
            .next()
            .expect("the average and the generator have the same parameters");
        let (id, ema, mapper) = param.consume();
        let source = source.reshape(ema.shape()).to_device(&ema.device());
        let buffer = self.path.iter().any(|p| BUFFERS.contains(&p.as_str()));
        let value = if buffer || self.decay == 0.0 {
            source
        } else {
            ema.mul_scalar(self.decay) + source.mul_scalar(1.0 - self.decay)
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Test helpers.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Which tensors (in visit order) are BatchNorm buffers, read from the module's paths.
    pub(crate) fn buffer_flags(g: &Generator) -> Vec<bool> {
        struct Paths(Vec<String>, Vec<bool>);
        impl ModuleVisitor for Paths {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.0.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
                let b = self.0.iter().any(|p| BUFFERS.contains(&p.as_str()));
                self.1.push(b);
            }
        }
        let mut p = Paths(Vec::new(), Vec::new());
        g.visit(&mut p);
        p.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_is_zero_up_to_the_start() {
        assert_eq!(decay_at(1, 0.999, 0), 0.999);
        assert_eq!(decay_at(5, 0.999, 5), 0.0);
        assert_eq!(decay_at(6, 0.999, 5), 0.999);
    }
}
