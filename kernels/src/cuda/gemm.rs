//! Matrix products through cuBLAS (loaded at run time by cudarc): `out[n × m] = x[n × k] · Wᵀ`,
//! the twin of [`crate::QMatrix::matmul`] with weights resident on device as f32 or bf16 and f32
//! accumulation either way.
//!
//! Row-major `out = x · Wᵀ` is column-major `outᵀ = W · xᵀ`: cuBLAS sees `W` (stored `[m][k]`,
//! i.e. column-major `k × m`) transposed and `x` (column-major `k × n`) as is. bf16 weights
//! multiply activations rounded to bf16 by [`super::ops`]' conversion kernel; the product is
//! written in f32. Both go through one `cublasGemmEx` call with `CUBLAS_COMPUTE_32F`, which
//! keeps full f32 arithmetic (no TF32: that is `CUBLAS_COMPUTE_32F_FAST_TF32`).

use cudarc::cublas::{CudaBlas, result, sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::device::Device;
use super::error::{CudaError, Result};
use super::launch::{check_len, int, invalid};
use super::ops::to_bf16;

/// Element type of weights on device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// Exact: the CPU path's dequantized values.
    F32,
    /// Half the bytes, rounded to nearest even; tensor-core products.
    Bf16,
}

#[derive(Debug)]
enum Data {
    F32(CudaSlice<f32>),
    /// Raw bf16 bits.
    Bf16(CudaSlice<u16>),
}

/// A `rows × cols` weight matrix on device, row-major.
#[derive(Debug)]
pub struct DeviceMatrix {
    data: Data,
    rows: usize,
    cols: usize,
}

impl DeviceMatrix {
    /// Uploads the row-major `rows × cols` `values` as `ty`.
    pub fn upload(device: &Device, values: &[f32], rows: usize, cols: usize, ty: WeightType) -> Result<Self> {
        const OP: &str = "cuda::DeviceMatrix::upload";
        if values.len() != rows * cols || rows == 0 || cols == 0 {
            return invalid(OP, format!("{} values for a {rows} × {cols} matrix", values.len()));
        }
        let data = match ty {
            WeightType::F32 => Data::F32(device.upload(values)?),
            WeightType::Bf16 => {
                let bits: Vec<u16> = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
                Data::Bf16(device.upload(&bits)?)
            }
        };
        Ok(Self { data, rows, cols })
    }

    /// Output features (`m`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (`k`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes on device.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => d.len() * 4,
            Data::Bf16(d) => d.len() * 2,
        }
    }
}

/// `x` rounded to bf16 (raw bits) in a new buffer.
fn rounded_to_bf16(device: &Device, x: &CudaSlice<f32>) -> Result<CudaSlice<u16>> {
    // SAFETY: every element is written by `to_bf16` before anything reads it.
    let mut out = unsafe { device.stream().alloc::<u16>(x.len()) }.map_err(super::device::driver)?;
    to_bf16(device, x, &mut out)?;
    Ok(out)
}

/// A cuBLAS handle on a device's stream.
#[derive(Debug)]
pub struct Blas {
    blas: CudaBlas,
}

fn blas_error(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Blas(format!("{e:?}"))
}

impl Blas {
    /// Creates a handle bound to `device`'s stream; errors when libcublas cannot be loaded.
    pub fn new(device: &Device) -> Result<Self> {
        // SAFETY: probing opens and closes the library by name.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::Blas("libcublas.so.12 is not loadable".into()));
        }
        Ok(Self { blas: CudaBlas::new(device.stream().clone()).map_err(blas_error)? })
    }

    /// `out[n × m] = x[n × k] · Wᵀ`.
    pub fn matmul(
        &self,
        device: &Device,
        x: &CudaSlice<f32>,
        n: usize,
        w: &DeviceMatrix,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.matmuls(device, x, n, &mut [(w, out)])
    }

    /// `out_i = x · W_iᵀ` for every `(W_i, out_i)` of `products`, all checked before any runs:
    /// the products of one input (q/k/v, gate/up) share one rounding of `x` to bf16.
    pub fn matmuls(
        &self,
        device: &Device,
        x: &CudaSlice<f32>,
        n: usize,
        products: &mut [(&DeviceMatrix, &mut CudaSlice<f32>)],
    ) -> Result<()> {
        const OP: &str = "cuda::matmul";
        for (w, out) in products.iter() {
            check_len(OP, "x", x, n * w.cols)?;
            check_len(OP, "out", out, n * w.rows)?;
            int(OP, "m", w.rows)?;
            int(OP, "k", w.cols)?;
        }
        if n == 0 {
            return Ok(());
        }
        // bf16 weights multiply the activations rounded to bf16; f32 weights multiply them as is.
        let needs_bf16 = products.iter().any(|(w, _)| matches!(w.data, Data::Bf16(_)));
        let x_bf16 = if needs_bf16 { Some(rounded_to_bf16(device, x)?) } else { None };
        for (w, out) in products.iter_mut() {
            self.gemm(device, x, x_bf16.as_ref(), n, w, out)?;
        }
        Ok(())
    }

    /// One checked product; `x_bf16` is `x` rounded, present when `w` is bf16.
    fn gemm(
        &self,
        device: &Device,
        x: &CudaSlice<f32>,
        x_bf16: Option<&CudaSlice<u16>>,
        n: usize,
        w: &DeviceMatrix,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "cuda::matmul";
        let (m_i, n_i, k_i) = (int(OP, "m", w.rows)?, int(OP, "n", n)?, int(OP, "k", w.cols)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let stream = device.stream();
        let (a, b, input_type, _records) = match (&w.data, x_bf16) {
            (Data::F32(weights), _) => {
                let ((a, ra), (b, rb)) = (weights.device_ptr(stream), x.device_ptr(stream));
                (a, b, sys::cudaDataType_t::CUDA_R_32F, (ra, rb))
            }
            (Data::Bf16(weights), Some(x_bf16)) => {
                let ((a, ra), (b, rb)) = (weights.device_ptr(stream), x_bf16.device_ptr(stream));
                (a, b, sys::cudaDataType_t::CUDA_R_16BF, (ra, rb))
            }
            (Data::Bf16(_), None) => return invalid(OP, "bf16 weights need the rounded activations".into()),
        };
        let (c, _c) = out.device_ptr_mut(stream);
        // SAFETY: a is m × k, b is n × k (both `input_type`), c is n × m f32 (checked above), all
        // on the handle's stream; the records keep them alive until the call is queued. Both
        // input types with an f32 output and 32F compute are supported GemmEx combinations.
        unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                m_i,
                n_i,
                k_i,
                (&alpha as *const f32).cast(),
                a as *const _,
                input_type,
                k_i,
                b as *const _,
                input_type,
                k_i,
                (&beta as *const f32).cast(),
                c as *mut _,
                sys::cudaDataType_t::CUDA_R_32F,
                m_i,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_error)?;
        Ok(())
    }
}
