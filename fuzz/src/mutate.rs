//! The random pass's mutator: seeded, so a failure is reproduced by its seed and index.

/// Longest input the random pass builds (the harnesses are not about size limits).
const MAX_LEN: usize = 4096;

const INTERESTING: &[u8] = b"\0\xff\n\r \t0129\"\\{}[],:<>-%@=#'\x7f\x80\xc3\xef\xbb\xbf";

/// Fill `out` with the next input: usually a corpus file mutated a few times, sometimes
/// random bytes.
pub fn next_input(rng: &mut fastrand::Rng, seeds: &[Vec<u8>], dict: &[&str], out: &mut Vec<u8>) {
    out.clear();
    if seeds.is_empty() || rng.u8(..) < 16 {
        let n = rng.usize(0..256);
        out.extend((0..n).map(|_| rng.u8(..)));
        return;
    }
    out.extend_from_slice(&seeds[rng.usize(..seeds.len())]);
    for _ in 0..rng.usize(1..=8) {
        mutate_once(rng, seeds, dict, out);
    }
    out.truncate(MAX_LEN);
}

fn mutate_once(rng: &mut fastrand::Rng, seeds: &[Vec<u8>], dict: &[&str], out: &mut Vec<u8>) {
    let len = out.len();
    match rng.u8(0..9) {
        0 if len > 0 => {
            let i = rng.usize(..len);
            out[i] ^= 1 << rng.u8(0..8);
        }
        1 if len > 0 => {
            let i = rng.usize(..len);
            out[i] = rng.u8(..);
        }
        2 if len > 0 => {
            let i = rng.usize(..len);
            out[i] = INTERESTING[rng.usize(..INTERESTING.len())];
        }
        3 => {
            let at = rng.usize(0..=len);
            let n = rng.usize(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            out.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let a = rng.usize(..len);
            let b = rng.usize(a..=len.min(a + 64));
            out.drain(a..b);
        }
        5 if len > 0 => {
            let a = rng.usize(..len);
            let b = rng.usize(a..=len.min(a + 64));
            let copy = out[a..b].to_vec();
            let at = rng.usize(0..=out.len());
            out.splice(at..at, copy);
        }
        6 if !seeds.is_empty() => {
            let other = &seeds[rng.usize(..seeds.len())];
            if !other.is_empty() {
                let a = rng.usize(..other.len());
                let b = rng.usize(a..=other.len());
                let at = rng.usize(0..=len);
                out.splice(at..at, other[a..b].iter().copied());
            }
        }
        7 if !dict.is_empty() => {
            let word = dict[rng.usize(..dict.len())].as_bytes();
            let at = rng.usize(0..=len);
            out.splice(at..at, word.iter().copied());
        }
        8 if len > 0 => {
            // Numbers steer lengths and counts: make one digit run bigger or smaller.
            let i = rng.usize(..len);
            if out[i].is_ascii_digit() {
                out[i] = b'0' + rng.u8(0..10);
            } else {
                out.truncate(i);
            }
        }
        _ => {}
    }
}
