//! Where weights come from: GGUF files and Hugging Face directories, both memory-mapped.
//!
//! Both sources speak GGUF tensor names (`blk.{i}.attn_q.weight`, …); the HF source maps its
//! names onto them, so the weight loader has one vocabulary.

mod gguf;
mod hf;

pub use gguf::{GgufSource, release_resident_pages};
pub use hf::HfSource;

use lcserve_kernels::{QuantType, WeightData};

use crate::error::Result;

/// Tensors by GGUF name; implemented by every model format.
pub trait TensorSource: Send + Sync {
    fn tensor(&self, name: &str) -> Result<WeightTensor>;
    fn has_tensor(&self, name: &str) -> bool;
    /// Tensor names, sorted (fingerprinting walks them in this order).
    fn tensor_names(&self) -> Vec<String>;
}

/// One stored tensor: its element type, its shape (outermost first, so a weight matrix is
/// `[rows = out features, cols = in features]`) and its raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct WeightTensor {
    pub name: String,
    pub dtype: QuantType,
    pub shape: Vec<usize>,
    pub bytes: WeightData,
}

impl WeightTensor {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}
