//! A-shape (StreamingLLM during prefill) and Tri-shape indices — static, no estimation.

use super::index::{HeadIndex, QueryBlocks, merge_sorted_ranges};

/// A-shape index (§1.2): each query sees the first `n_init` keys and the `n_local` keys
/// ending at itself. With `n_last > 0` it is Tri-shape: query blocks holding any of the
/// chunk's last `n_last` queries attend densely (in a final chunk those are the question).
///
/// Executed per query block `[start, end)` as two ranges, `[0, n_init)` and
/// `[start + 1 - n_local, end)`, merged when they meet: a superset of the conceptual mask by
/// at most 63 keys per row (later rows of a block see a slightly longer window), with no key
/// counted twice when the sink and the window overlap.
pub fn a_shape_index(blocks: &QueryBlocks, n_init: usize, n_local: usize, n_last: usize) -> HeadIndex {
    let mut index = HeadIndex::with_capacity(blocks.count());
    let dense_from = blocks.len.saturating_sub(n_last);
    let mut ranges = Vec::with_capacity(2);
    for t in 0..blocks.count() {
        let p = blocks.positions(t);
        ranges.clear();
        if n_last > 0 && p.end > dense_from {
            ranges.push((0, p.end as u32));
        } else {
            ranges.push((0, n_init.min(p.end) as u32));
            ranges.push(((p.start + 1).saturating_sub(n_local.max(1)) as u32, p.end as u32));
            merge_sorted_ranges(&mut ranges);
        }
        index.push_block(&ranges, &[]);
    }
    index
}
