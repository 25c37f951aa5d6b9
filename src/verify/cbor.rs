//! Just enough CBOR (RFC 8949) to read a COSE_Sign1 envelope: definite
//! lengths only, every length checked against the input, nesting capped.

use anyhow::{anyhow, bail, Result};

const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Uint(u64),
    /// A negative integer, as `-1 - n`.
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Tag(u64, Box<Value<'a>>),
    Simple(u8),
}

impl Value<'_> {
    /// The value under integer or text key `key` of a map.
    pub fn get(&self, key: &Value) -> Option<&Value<'_>> {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Uint(n) => i64::try_from(*n).ok(),
            Value::Nint(n) => i64::try_from(*n).ok().map(|n| -1 - n),
            _ => None,
        }
    }
}

/// Decodes one item that must fill `data` exactly.
pub fn decode(data: &[u8]) -> Result<Value<'_>> {
    let mut at = 0;
    let v = item(data, &mut at, 0)?;
    if at != data.len() {
        bail!("CBOR: {} bytes after the item", data.len() - at);
    }
    Ok(v)
}

fn take<'a>(data: &'a [u8], at: &mut usize, n: u64) -> Result<&'a [u8]> {
    let n = usize::try_from(n).map_err(|_| anyhow!("CBOR: length too large"))?;
    let end = at
        .checked_add(n)
        .filter(|&e| e <= data.len())
        .ok_or_else(|| anyhow!("CBOR: item longer than its input"))?;
    let s = &data[*at..end];
    *at = end;
    Ok(s)
}

fn item<'a>(data: &'a [u8], at: &mut usize, depth: usize) -> Result<Value<'a>> {
    if depth > MAX_DEPTH {
        bail!("CBOR: nested deeper than {MAX_DEPTH}");
    }
    let head = *take(data, at, 1)?.first().expect("one byte");
    let (major, info) = (head >> 5, head & 0x1f);
    let arg = match info {
        0..=23 => u64::from(info),
        24..=27 => take(data, at, 1 << (info - 24))?
            .iter()
            .fold(0u64, |a, &b| (a << 8) | u64::from(b)),
        _ => bail!("CBOR: indefinite lengths and reserved values are not supported"),
    };
    // Each element takes at least one byte: cap allocations by the input.
    let room = (data.len() - *at) as u64;
    Ok(match major {
        0 => Value::Uint(arg),
        1 => Value::Nint(arg),
        2 => Value::Bytes(take(data, at, arg)?),
        3 => Value::Text(
            std::str::from_utf8(take(data, at, arg)?)
                .map_err(|_| anyhow!("CBOR: text is not UTF-8"))?,
        ),
        4 => {
            if arg > room {
                bail!("CBOR: array longer than its input");
            }
            let mut v = Vec::with_capacity(arg as usize);
            for _ in 0..arg {
                v.push(item(data, at, depth + 1)?);
            }
            Value::Array(v)
        }
        5 => {
            if arg > room / 2 {
                bail!("CBOR: map longer than its input");
            }
            let mut v = Vec::with_capacity(arg as usize);
            for _ in 0..arg {
                let k = item(data, at, depth + 1)?;
                v.push((k, item(data, at, depth + 1)?));
            }
            Value::Map(v)
        }
        6 => Value::Tag(arg, Box::new(item(data, at, depth + 1)?)),
        _ => match info {
            0..=23 => Value::Simple(info),
            _ => bail!("CBOR: floats are not expected here"),
        },
    })
}

/// The head of a byte or text string of length `len`, major type `major`.
pub fn head(major: u8, len: usize) -> Vec<u8> {
    let m = major << 5;
    match len {
        0..=23 => vec![m | len as u8],
        24..=0xff => vec![m | 24, len as u8],
        0x100..=0xffff => [vec![m | 25], (len as u16).to_be_bytes().to_vec()].concat(),
        _ => [vec![m | 26], (len as u32).to_be_bytes().to_vec()].concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_kinds_cose_uses() {
        // [h'a1', {1: -7, "k": "v"}, tag 1(1767323045)]
        let data = [
            0x83, 0x41, 0xa1, 0xa2, 0x01, 0x26, 0x61, b'k', 0x61, b'v', 0xc1, 0x1a, 0x69, 0x57,
            0x35, 0xa5,
        ];
        let v = decode(&data).unwrap();
        let Value::Array(items) = v else { panic!() };
        assert_eq!(items[0], Value::Bytes(&[0xa1]));
        assert_eq!(items[1].get(&Value::Uint(1)).and_then(Value::int), Some(-7));
        assert_eq!(items[1].get(&Value::Text("k")), Some(&Value::Text("v")));
        assert_eq!(items[2], Value::Tag(1, Box::new(Value::Uint(1767323045))));
    }

    #[test]
    fn hostile_lengths_and_nesting_are_refused() {
        assert!(decode(&[0x5a, 0xff, 0xff, 0xff, 0xff]).is_err()); // bstr of 4 GiB
        assert!(decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0x9f, 0xff]).is_err()); // indefinite array
        assert!(decode(&[0x81; 40]).is_err()); // deep nesting
        assert!(decode(&[0x01, 0x02]).is_err()); // trailing bytes
    }

    #[test]
    fn heads_round_trip() {
        for len in [0usize, 23, 24, 255, 256, 70000] {
            let mut enc = head(2, len);
            enc.extend(std::iter::repeat_n(0u8, len));
            assert_eq!(decode(&enc).unwrap(), Value::Bytes(&vec![0u8; len]));
        }
    }
}
