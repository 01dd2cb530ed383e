//! [`QMatrix`]: a 2-D weight in GGUF layout, and [`WeightData`], the bytes behind it.

use std::fmt;
use std::sync::Arc;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use std::sync::OnceLock;

use super::matmul::Activations;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::packed::Packed;
use super::types::QuantType;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::vnni::VnniWeights;
use crate::error::{KernelError, Result, check_len};

/// The bytes of a weight. Either owned, or a window into a shared buffer so that a
/// memory-mapped model file (`Arc<memmap2::Mmap>` implements `AsRef<[u8]>`) backs every
/// tensor without copying; the `Arc` keeps the mapping alive as long as any matrix uses it.
#[derive(Clone)]
pub enum WeightData {
    /// Bytes owned by the matrix.
    Owned(Vec<u8>),
    /// `len` bytes at `offset` of a shared buffer. Build with [`WeightData::shared`], which
    /// checks the window lies inside the buffer.
    Shared {
        /// The whole buffer (e.g. a mapped file).
        buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
        /// Start of this tensor inside `buf`.
        offset: usize,
        /// Length of this tensor in bytes.
        len: usize,
    },
}

impl WeightData {
    /// A window `[offset, offset + len)` of `buf`; errors if it does not fit.
    pub fn shared(buf: Arc<dyn AsRef<[u8]> + Send + Sync>, offset: usize, len: usize) -> Result<Self> {
        let total = (*buf).as_ref().len();
        match offset.checked_add(len) {
            Some(end) if end <= total => Ok(Self::Shared { buf, offset, len }),
            _ => Err(KernelError::InvalidShape {
                op: "WeightData::shared",
                detail: format!("window {offset}+{len} exceeds buffer of {total} bytes"),
            }),
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            // `shared` validated the window; a buffer whose length later shrinks would be a
            // broken `AsRef` impl, so fall back to an empty slice rather than panic.
            Self::Shared { buf, offset, len } => (**buf).as_ref().get(*offset..*offset + *len).unwrap_or(&[]),
        }
    }
}

impl From<Vec<u8>> for WeightData {
    fn from(v: Vec<u8>) -> Self {
        Self::Owned(v)
    }
}

impl fmt::Debug for WeightData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Self::Shared { offset, len, .. } => write!(f, "Shared({len} bytes at {offset})"),
        }
    }
}

/// A weight matrix of `rows` output features × `cols` input features, row-major, each row
/// `ty.row_bytes(cols)` bytes — the layout GGUF uses for a 2-D tensor with `ne0 = cols`.
/// Immutable once built; cheap to share across threads.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: WeightData,
    /// Decode-friendly copy for the AVX2 and AVX-512 f32 kernels, the GEMM path's decoding
    /// and the AVX2 integer kernels (`Q4_0`, `Q4_1`, `Q8_0` on CPUs with AVX2); the GGUF bytes
    /// in `data` remain the source for every other path. Built by [`QMatrix::prepare`] or the
    /// first product that reads it, so a matrix only ever used for lookups (an embedding)
    /// never pays for it.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    packed: OnceLock<Option<Arc<Packed>>>,
    /// Row-interleaved copy for the integer tiles (AVX-512 VNNI or AVX2), built likewise:
    /// only matrices run with `Activations::Int8` pay its memory (and then never build
    /// `packed`).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    vnni: OnceLock<Option<Arc<VnniWeights>>>,
}

impl QMatrix {
    /// Wraps `data` after checking `cols` is a whole number of blocks, both dimensions are
    /// non-zero and the byte length equals `rows * row_bytes(cols)`.
    pub fn new(ty: QuantType, rows: usize, cols: usize, data: impl Into<WeightData>) -> Result<Self> {
        let data = data.into();
        if rows == 0 || cols == 0 {
            return Err(KernelError::InvalidShape {
                op: "QMatrix::new",
                detail: format!("empty matrix {rows}x{cols}"),
            });
        }
        let row_bytes = ty.row_bytes(cols)?;
        let expected = rows.checked_mul(row_bytes).ok_or_else(|| KernelError::InvalidShape {
            op: "QMatrix::new",
            detail: format!("{rows} rows of {row_bytes} bytes overflow usize"),
        })?;
        check_len("QMatrix::new", "data", data.as_bytes().len(), expected)?;
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            data,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            packed: OnceLock::new(),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            vnni: OnceLock::new(),
        })
    }

    /// Quantizes a row-major f32 matrix (`rows * cols` values) with [`super::quantize_row`].
    pub fn quantize(ty: QuantType, rows: usize, cols: usize, values: &[f32]) -> Result<Self> {
        check_len("QMatrix::quantize", "values", values.len(), rows.saturating_mul(cols))?;
        let row_bytes = ty.row_bytes(cols)?;
        let mut data = vec![0u8; rows * row_bytes];
        for (x, o) in values.chunks_exact(cols.max(1)).zip(data.chunks_exact_mut(row_bytes.max(1))) {
            super::quantize_row(ty, x, o)?;
        }
        Self::new(ty, rows, cols, data)
    }

    /// Element type.
    pub fn ty(&self) -> QuantType {
        self.ty
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All bytes, `rows * row_bytes`.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Decodes row `r` into `out` (`cols` values) — e.g. an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            return Err(KernelError::InvalidShape {
                op: "QMatrix::dequantize_row",
                detail: format!("row {r} out of {} rows", self.rows),
            });
        }
        check_len("QMatrix::dequantize_row", "out", out.len(), self.cols)?;
        super::dequantize_row_unchecked(self.ty, self.row(r), out);
        Ok(())
    }

    /// Builds now the repacked copy that products in mode `acts` read, which the first such
    /// product would otherwise build (a pass over the weights): models call this for every
    /// matrix at load so that no request pays for it.
    pub fn prepare(&self, acts: Activations) {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if acts != Activations::Int8 || self.vnni().is_none() {
            self.packed();
        }
        let _ = acts;
    }

    /// The repacked copy, built on first use; `None` where this type has none or AVX2 is
    /// missing.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    pub(crate) fn packed(&self) -> Option<&Packed> {
        self.packed
            .get_or_init(|| {
                if !crate::simd::has_avx2_fma() {
                    return None;
                }
                Packed::new(self.ty, self.rows, self.cols, self.bytes(), self.row_bytes).map(Arc::new)
            })
            .as_deref()
    }

    /// The row-interleaved copy for the integer tiles, built on first use; `None` where this
    /// CPU lacks AVX2 (with FMA and F16C) or the type has no such layout.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    pub(crate) fn vnni(&self) -> Option<&VnniWeights> {
        self.vnni
            .get_or_init(|| {
                if !crate::simd::has_avx2_fma() {
                    return None;
                }
                VnniWeights::new(self.ty, self.rows, self.cols, self.bytes(), self.row_bytes).map(Arc::new)
            })
            .as_deref()
    }

    /// Bytes of row `r`; `r < rows` is the caller's invariant.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

#[cfg(all(test, any(target_arch = "x86", target_arch = "x86_64")))]
mod tests {
    use super::*;

    /// Each mode builds the one copy its kernels read, and only when asked or used: an
    /// `Int8` model must not also hold the f32 kernels' copy.
    #[test]
    fn prepare_builds_only_the_copy_the_mode_reads() {
        let values: Vec<f32> = (0..64 * 96).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let fresh = || QMatrix::quantize(QuantType::Q4_1, 64, 96, &values).expect("valid shape");
        let m = fresh();
        assert!(m.packed.get().is_none() && m.vnni.get().is_none(), "nothing is built at construction");
        m.prepare(Activations::F32);
        assert_eq!(m.packed.get().is_some_and(Option::is_some), crate::simd::has_avx2_fma());
        assert!(m.vnni.get().is_none());
        let m = fresh();
        m.prepare(Activations::Int8);
        let tiles = crate::simd::has_avx2_fma();
        assert_eq!(m.vnni.get().is_some_and(Option::is_some), tiles);
        assert_eq!(m.packed.get().is_some(), !tiles, "the f32 kernels' copy only where the tiles are missing");
    }
}
