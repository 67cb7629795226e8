//! One patient's bins of one code: a ring of slots sorted by minute, in 20-byte slots while
//! every sum, minimum and maximum is exactly an `f32` (integer vitals), else 32-byte `f64` ones.

use std::collections::VecDeque;

use super::Bin;

/// Bytes of one bin in memory whose values need an `f64` (32).
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// Bytes of one bin in memory whose sum, min and max are each exactly an `f32` (20).
pub const NARROW_SLOT_BYTES: usize = std::mem::size_of::<Narrow>();

/// One bin in memory: minute (minutes since the epoch) and aggregate.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    minute: i32,
    count: u32,
    sum: f64,
    min: f64,
    max: f64,
}

/// One bin whose sum, min and max are each exactly an `f32` — what integer vitals (heart rate,
/// SpO2, steps: most of the bins) always give — stored in 20 bytes and read back as the very
/// same `f64`s, so a rule sees the same values as from a [`Slot`] or the scan-time fold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Narrow {
    minute: i32,
    count: u32,
    sum: f32,
    min: f32,
    max: f32,
}

/// A slot kind of a ring.
trait SlotKind: Copy {
    fn minute(&self) -> i32;
    fn bin(&self) -> Bin;
    /// The slot of `b` at minute `m`, if this kind holds `b` exactly.
    fn of(m: i32, b: &Bin) -> Option<Self>;
}

impl SlotKind for Slot {
    fn minute(&self) -> i32 {
        self.minute
    }
    fn bin(&self) -> Bin {
        Bin {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
        }
    }
    fn of(minute: i32, b: &Bin) -> Option<Slot> {
        Some(Slot {
            minute,
            count: b.count,
            sum: b.sum,
            min: b.min,
            max: b.max,
        })
    }
}

/// `x` as an `f32`, if that is exactly `x`.
fn exact(x: f64) -> Option<f32> {
    let f = x as f32;
    (f64::from(f) == x).then_some(f)
}

impl SlotKind for Narrow {
    fn minute(&self) -> i32 {
        self.minute
    }
    fn bin(&self) -> Bin {
        Bin {
            count: self.count,
            sum: f64::from(self.sum),
            min: f64::from(self.min),
            max: f64::from(self.max),
        }
    }
    fn of(minute: i32, b: &Bin) -> Option<Narrow> {
        Some(Narrow {
            minute,
            count: b.count,
            sum: exact(b.sum)?,
            min: exact(b.min)?,
            max: exact(b.max)?,
        })
    }
}

/// Adds `v` at minute `m` to slots sorted by minute, growing the ring to at most `cap` slots
/// (doubling from 4 like a `VecDeque`, but never past `cap` while it holds fewer: a ring of a
/// 67-minute window ends at 73 slots, not the 128 of a plain doubling). False, and nothing
/// changed, when the resulting bin does not fit this kind of slot.
fn add_slot<S: SlotKind>(slots: &mut VecDeque<S>, m: i32, v: f64, cap: usize) -> bool {
    let at = slots.partition_point(|s| s.minute() < m);
    match slots.get_mut(at) {
        Some(s) if s.minute() == m => {
            let mut b = s.bin();
            b.add(v);
            let Some(n) = S::of(m, &b) else {
                return false;
            };
            *s = n;
        }
        _ => {
            let Some(n) = S::of(m, &Bin::of(v)) else {
                return false;
            };
            if slots.len() == slots.capacity() {
                let want = (slots.len() * 2).max(4).min(cap).max(slots.len() + 1);
                slots.reserve_exact(want - slots.len());
            }
            slots.insert(at, n);
        }
    }
    true
}

/// One patient's bins of one code, sorted by minute (a ring: the horizon drops the oldest
/// without moving the rest): narrow until a value needs an `f64`, then wide for good.
#[derive(Debug)]
pub(super) enum Ring {
    Narrow(VecDeque<Narrow>),
    Wide(VecDeque<Slot>),
}

impl Ring {
    /// An empty ring (narrow until a value needs an `f64`).
    pub(super) fn new() -> Ring {
        Ring::Narrow(VecDeque::new())
    }

    pub(super) fn add(&mut self, m: i32, v: f64, cap: usize) {
        let slots = match self {
            Ring::Wide(slots) => {
                add_slot(slots, m, v, cap);
                return;
            }
            Ring::Narrow(slots) => slots,
        };
        if add_slot(slots, m, v, cap) {
            return;
        }
        let mut wide = VecDeque::with_capacity(slots.capacity());
        wide.extend(slots.iter().filter_map(|s| Slot::of(s.minute, &s.bin())));
        add_slot(&mut wide, m, v, cap);
        *self = Ring::Wide(wide);
    }

    /// Drops the slots before minute `hm`; true if none is left.
    pub(super) fn prune(&mut self, hm: i32) -> bool {
        fn cut<S: SlotKind>(slots: &mut VecDeque<S>, hm: i32) -> bool {
            let n = slots.partition_point(|s| s.minute() < hm);
            slots.drain(..n);
            slots.is_empty()
        }
        match self {
            Ring::Narrow(s) => cut(s, hm),
            Ring::Wide(s) => cut(s, hm),
        }
    }

    /// Calls `f(minute, bin)` for the slots of minutes in `[lo, hi)`.
    pub(super) fn each(&self, (lo, hi): (i32, i32), f: &mut impl FnMut(i32, Bin)) {
        fn walk<S: SlotKind>(slots: &VecDeque<S>, lo: i32, hi: i32, f: &mut impl FnMut(i32, Bin)) {
            let a = slots.partition_point(|s| s.minute() < lo);
            for s in slots.range(a..).take_while(|s| s.minute() < hi) {
                f(s.minute(), s.bin());
            }
        }
        match self {
            Ring::Narrow(s) => walk(s, lo, hi, f),
            Ring::Wide(s) => walk(s, lo, hi, f),
        }
    }

    /// Bins held, and bytes of the slots allocated.
    pub(super) fn footprint(&self) -> (usize, usize) {
        match self {
            Ring::Narrow(s) => (s.len(), s.capacity() * NARROW_SLOT_BYTES),
            Ring::Wide(s) => (s.len(), s.capacity() * SLOT_BYTES),
        }
    }
}
