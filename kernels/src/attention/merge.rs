//! Log-sum-exp merging of partial attention outputs (algorithms.md §0.2).

use crate::error::{KernelError, Result, check_len};

/// Merges a partial result computed over a disjoint key set into an accumulator, row by row:
/// `lse = logaddexp(lse_acc, lse_part)`, `o = e^(lse_acc - lse)·o_acc + e^(lse_part - lse)·o_part`.
///
/// Rows are `acc_lse.len()`; each row has `acc_o.len() / acc_lse.len()` values. An empty part
/// has `lse = -inf` and contributes nothing (never NaN), so an accumulator may start as
/// zeros with `lse = -inf`. The merge is associative and commutative.
pub fn merge_lse(acc_o: &mut [f32], acc_lse: &mut [f32], part_o: &[f32], part_lse: &[f32]) -> Result<()> {
    let rows = acc_lse.len();
    check_len("merge_lse", "part_lse", part_lse.len(), rows)?;
    check_len("merge_lse", "part_o", part_o.len(), acc_o.len())?;
    if rows == 0 || !acc_o.len().is_multiple_of(rows) {
        return Err(KernelError::InvalidShape {
            op: "merge_lse",
            detail: format!("{} output values are not {rows} equal rows", acc_o.len()),
        });
    }
    let d = acc_o.len() / rows;
    for ((o, l), (po, &pl)) in
        acc_o.chunks_exact_mut(d).zip(acc_lse.iter_mut()).zip(part_o.chunks_exact(d).zip(part_lse))
    {
        merge_row(o, l, po, pl);
    }
    Ok(())
}

/// One row of [`merge_lse`].
#[inline]
pub(crate) fn merge_row(o: &mut [f32], lse: &mut f32, po: &[f32], pl: f32) {
    if pl == f32::NEG_INFINITY {
        return;
    }
    if *lse == f32::NEG_INFINITY {
        o.copy_from_slice(po);
        *lse = pl;
        return;
    }
    let m = lse.max(pl);
    let (wa, wb) = ((*lse - m).exp(), (pl - m).exp());
    let s = wa + wb;
    let (wa, wb) = (wa / s, wb / s);
    for (x, y) in o.iter_mut().zip(po) {
        *x = wa * *x + wb * y;
    }
    *lse = m + s.ln();
}
