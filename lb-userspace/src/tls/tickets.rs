//! Session ticket keys shared by every cell, so a client resumes whichever cell it lands on.
//! The master writes them into a memfd (`TicketKeys`): a current key that encrypts and the
//! previous one that still decrypts, replaced every `ROTATION`; cells read them under a
//! sequence lock (`SharedTicketer`, rustls' `ProducesTickets`). AES-256-GCM, the key's name in
//! front of each ticket.
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, fence};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::sys::{SharedCounters, SysError};

/// How often the master makes a new key; tickets stay decryptable for up to twice as long.
pub const ROTATION: Duration = Duration::from_secs(3600);

const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// Words of one key: its name, then the AES key.
const KEY_WORDS: usize = (NAME_LEN + KEY_LEN) / 8;
/// The region: a sequence number (odd while the master writes), the current key, the previous.
const WORDS: usize = 1 + 2 * KEY_WORDS;
const TAG_LEN: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    name: [u8; NAME_LEN],
    secret: [u8; KEY_LEN],
}

impl Key {
    fn random() -> Key {
        let mut k = Key {
            name: [0; NAME_LEN],
            secret: [0; KEY_LEN],
        };
        aws_lc_rs::rand::fill(&mut k.name).expect("the system random generator works");
        aws_lc_rs::rand::fill(&mut k.secret).expect("the system random generator works");
        k
    }

    fn to_words(self) -> [u64; KEY_WORDS] {
        let mut bytes = [0u8; KEY_WORDS * 8];
        bytes[..NAME_LEN].copy_from_slice(&self.name);
        bytes[NAME_LEN..].copy_from_slice(&self.secret);
        let mut w = [0u64; KEY_WORDS];
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            w[i] = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        }
        w
    }

    fn from_words(w: &[u64]) -> Key {
        let mut bytes = [0u8; KEY_WORDS * 8];
        for (i, v) in w.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        let mut k = Key {
            name: [0; NAME_LEN],
            secret: [0; KEY_LEN],
        };
        k.name.copy_from_slice(&bytes[..NAME_LEN]);
        k.secret.copy_from_slice(&bytes[NAME_LEN..]);
        k
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.secret).expect("a 32-byte key"))
    }
}

/// The shared region, master side: creates it with two fresh keys and rotates them.
pub struct TicketKeys {
    counters: SharedCounters,
    file: File,
}

impl TicketKeys {
    pub fn create() -> Result<Self, SysError> {
        let fd = rustix::fs::memfd_create("portico-tickets", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| SysError {
                op: "memfd_create(portico-tickets)",
                source: e.into(),
            })?;
        let file = File::from(fd);
        file.set_len((WORDS * 8) as u64).map_err(|e| SysError {
            op: "ftruncate(portico-tickets)",
            source: e,
        })?;
        let counters = SharedCounters::map(&file, WORDS)?;
        let keys = TicketKeys { counters, file };
        // Both slots hold keys from the start: nothing decrypts with an all-zero key.
        keys.write(Key::random(), Key::random());
        Ok(keys)
    }

    /// A descriptor of the region for a cell.
    pub fn fd(&self) -> std::io::Result<OwnedFd> {
        self.file.try_clone().map(OwnedFd::from)
    }

    /// A new current key; the current one becomes the previous (still decrypts).
    pub fn rotate(&self) {
        let (current, _) = read(self.counters.all());
        self.write(Key::random(), current);
    }

    fn write(&self, current: Key, previous: Key) {
        let w = self.counters.all();
        let seq = w[0].load(Relaxed);
        w[0].store(seq | 1, Relaxed);
        fence(Release);
        for (i, v) in current
            .to_words()
            .into_iter()
            .chain(previous.to_words())
            .enumerate()
        {
            w[1 + i].store(v, Relaxed);
        }
        w[0].store((seq | 1) + 1, Release);
    }
}

/// The keys and the sequence number they were read at, consistent.
fn read(w: &[AtomicU64]) -> (Key, Key) {
    read_seq(w).1
}

fn read_seq(w: &[AtomicU64]) -> (u64, (Key, Key)) {
    loop {
        let s1 = w[0].load(Acquire);
        if s1 & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let words: Vec<u64> = w[1..WORDS].iter().map(|v| v.load(Relaxed)).collect();
        fence(Acquire);
        if w[0].load(Relaxed) == s1 {
            let current = Key::from_words(&words[..KEY_WORDS]);
            let previous = Key::from_words(&words[KEY_WORDS..]);
            return (s1, (current, previous));
        }
    }
}

/// A cell's ticketer over the master's region.
pub struct SharedTicketer {
    counters: SharedCounters,
    /// The AEAD keys of the last sequence number seen (key setup is not free).
    cache: Mutex<Option<Cached>>,
}

struct Cached {
    seq: u64,
    current: ([u8; NAME_LEN], LessSafeKey),
    previous: ([u8; NAME_LEN], LessSafeKey),
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTicketer")
    }
}

impl SharedTicketer {
    pub fn open(fd: OwnedFd) -> Result<Self, SysError> {
        let counters = SharedCounters::map(&File::from(fd), WORDS)?;
        Ok(SharedTicketer {
            counters,
            cache: Mutex::new(None),
        })
    }

    fn with_keys<T>(&self, f: impl FnOnce(&Cached) -> T) -> T {
        let w = self.counters.all();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = match &*cache {
            Some(c) => c.seq == w[0].load(Acquire),
            None => false,
        };
        if !fresh {
            let (seq, (cur, prev)) = read_seq(w);
            *cache = Some(Cached {
                seq,
                current: (cur.name, cur.aead()),
                previous: (prev.name, prev.aead()),
            });
        }
        f(cache.as_ref().expect("filled above"))
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(ROTATION.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        self.with_keys(|k| {
            let (name, key) = &k.current;
            let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
            out.extend_from_slice(name);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(plain);
            let mut body = out.split_off(NAME_LEN + NONCE_LEN);
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name),
                &mut body,
            )
            .ok()?;
            out.append(&mut body);
            Some(out)
        })
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        self.with_keys(|k| {
            let key = [&k.current, &k.previous]
                .into_iter()
                .find(|(n, _)| n.as_slice() == name)
                .map(|(_, key)| key)?;
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buf = sealed.to_vec();
            let plain = key.open_in_place(nonce, Aad::from(name), &mut buf).ok()?;
            let n = plain.len();
            buf.truncate(n);
            Some(buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    #[test]
    fn a_cell_decrypts_what_another_encrypted_until_two_rotations() {
        let keys = TicketKeys::create().unwrap();
        let a = SharedTicketer::open(keys.fd().unwrap()).unwrap();
        let b = SharedTicketer::open(keys.fd().unwrap()).unwrap();
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        keys.rotate();
        // The previous key still decrypts; new tickets use the new one.
        assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        let t2 = b.encrypt(b"x").unwrap();
        assert_ne!(t[..NAME_LEN], t2[..NAME_LEN]);
        keys.rotate();
        assert_eq!(a.decrypt(&t), None);
        assert_eq!(a.decrypt(&t2).as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn tampered_or_short_tickets_are_refused() {
        let keys = TicketKeys::create().unwrap();
        let a = SharedTicketer::open(keys.fd().unwrap()).unwrap();
        let mut t = a.encrypt(b"state").unwrap();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(a.decrypt(&t), None);
        assert_eq!(a.decrypt(&t[..10]), None);
        assert_eq!(a.decrypt(&[]), None);
    }
}
