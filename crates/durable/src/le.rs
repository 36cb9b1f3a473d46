//! Little-endian fields of the on-disk formats.
//!
//! `read_*` are bounds-checked and return `None` when the field does not lie
//! inside the buffer. `*_at` are for fields inside a length the decoder has
//! already checked; reaching past the end there is a bug in the decoder, and
//! they panic saying so.

/// The `N` bytes at `at`, if they lie inside `b`.
fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    b.get(at..end)?.try_into().ok()
}

/// The little-endian `u16` at `at`, if it lies inside `b`.
pub fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_le_bytes)
}

/// The little-endian `u32` at `at`, if it lies inside `b`.
pub fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `at`, if it lies inside `b`.
pub fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    array(b, at).map(u64::from_le_bytes)
}

#[track_caller]
fn checked<T>(v: Option<T>, at: usize, len: usize) -> T {
    match v {
        Some(v) => v,
        None => panic!(
            "decoder bug: field at byte {at} lies past the end of a checked {len}-byte buffer"
        ),
    }
}

/// The little-endian `u16` at `at` of a buffer whose length was checked.
#[track_caller]
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    checked(read_u16(b, at), at, b.len())
}

/// The little-endian `u32` at `at` of a buffer whose length was checked.
#[track_caller]
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    checked(read_u32(b, at), at, b.len())
}

/// The little-endian `u64` at `at` of a buffer whose length was checked.
#[track_caller]
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    checked(read_u64(b, at), at, b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_bounds() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(read_u16(&b, 7), Some(0x0908));
        assert_eq!(read_u32(&b, 0), Some(0x0403_0201));
        assert_eq!(read_u64(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(read_u64(&b, 2), None);
        assert_eq!(read_u32(&b, usize::MAX), None);
        assert_eq!(read_u16(&b, 8), None);
        assert_eq!(u32_at(&b, 5), 0x0908_0706);
    }

    #[test]
    #[should_panic(expected = "decoder bug")]
    fn checked_read_past_the_end_panics() {
        u64_at(&[0u8; 7], 0);
    }
}
