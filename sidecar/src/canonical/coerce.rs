//! Reading booleans and integers the way each engine's decoder reads them,
//! so a metering field (`stream`, `max_tokens`, ...) means to the gateway
//! what it means to the model.
//!
//! - **Go** (`encoding/json`, Ollama): a `bool` field takes only JSON
//!   `true`/`false`; an `int` field only an integer literal that fits. `null`
//!   leaves the field as it was.
//! - **pydantic v2, lax mode** (vLLM's request models): a `bool` takes
//!   `true`/`false`, the numbers 0 and 1, and the strings `0 1 f t n y no
//!   off on yes false true` in any case; an `int` takes integers, floats
//!   without a fraction, `true`/`false`, and strings of digits (surrounding
//!   white space, a sign, `_` between digits, and a `.0...` fraction
//!   allowed). Checked against pydantic 2.14 in the vLLM-faithful test
//!   upstream.
//! - **Ollama's options map** (`num_predict`): any JSON number, truncated
//!   toward zero.

use super::json::{Number, Value};

/// How a field is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Go,
    Pydantic,
}

/// A value the engine's decoder refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// `Some(bool)`, `None` for null (the field's default applies), or refused.
pub fn boolean(decoder: Decoder, value: &Value) -> Result<Option<bool>, Refused> {
    match (decoder, value) {
        (_, Value::Null) => Ok(None),
        (_, Value::Bool(b)) => Ok(Some(*b)),
        (Decoder::Go, _) => Err(Refused),
        (Decoder::Pydantic, Value::Number(n)) => {
            let x = n.as_f64();
            if x == 0.0 {
                Ok(Some(false))
            } else if x == 1.0 {
                Ok(Some(true))
            } else {
                Err(Refused)
            }
        }
        (Decoder::Pydantic, Value::String(s)) => match s.as_str().to_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(Some(false)),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Some(true)),
            _ => Err(Refused),
        },
        (Decoder::Pydantic, _) => Err(Refused),
    }
}

/// An integer: `Some(n)` (saturated to `i128`), `None` for null, or refused.
pub fn integer(decoder: Decoder, value: &Value) -> Result<Option<i128>, Refused> {
    match (decoder, value) {
        (_, Value::Null) => Ok(None),
        // `i64`'s parser takes exactly JSON's integer literals (a JSON number
        // never starts with `+`) and refuses a fraction or an exponent, as
        // Go does.
        (Decoder::Go, Value::Number(n)) => n
            .as_str()
            .parse::<i64>()
            .map(|v| Some(i128::from(v)))
            .map_err(|_| Refused),
        (Decoder::Go, _) => Err(Refused),
        (Decoder::Pydantic, Value::Bool(b)) => Ok(Some(i128::from(*b))),
        (Decoder::Pydantic, Value::Number(n)) => {
            if n.is_integer_literal() {
                return Ok(Some(parse_saturating(n.as_str())));
            }
            let x = n.as_f64();
            if x.is_finite() && x.fract() == 0.0 {
                // Saturating float-to-int cast: beyond i128 is "huge" anyway.
                Ok(Some(x as i128))
            } else {
                Err(Refused)
            }
        }
        (Decoder::Pydantic, Value::String(s)) => {
            python_int_str(&s.as_str()).ok_or(Refused).map(Some)
        }
        (Decoder::Pydantic, _) => Err(Refused),
    }
}

/// Ollama's `Options.FromMap` for an integer option: any number, truncated
/// toward zero (`int64(float64)`); anything else is refused, and so are
/// numbers outside the `int64` range (Go's conversion of those is
/// platform-defined, so no bound could be judged).
pub fn ollama_option_int(value: &Value) -> Result<Option<i128>, Refused> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let x = n.as_f64().trunc();
            if x.is_finite() && x.abs() < 9.2e18 {
                Ok(Some(x as i128))
            } else {
                Err(Refused)
            }
        }
        _ => Err(Refused),
    }
}

/// A positive token bound, or `None` for "no bound given" (absent, null,
/// zero or negative values mean the engine's default or no limit).
pub fn token_bound(n: Option<i128>) -> Option<u64> {
    n.filter(|n| *n > 0)
        .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
}

/// The JSON form of a decided integer, saturated to the 64-bit range (an
/// engine reads a saturated bound as it reads the huge one: too large, or
/// no limit).
pub fn number_of(n: i128) -> Value {
    if let Ok(v) = i64::try_from(n) {
        Value::Number(Number::from_i64(v))
    } else if n.is_negative() {
        Value::Number(Number::from_i64(i64::MIN))
    } else {
        Value::Number(Number::from_u64(u64::try_from(n).unwrap_or(u64::MAX)))
    }
}

fn parse_saturating(text: &str) -> i128 {
    text.parse::<i128>().unwrap_or(if text.starts_with('-') {
        i128::MIN
    } else {
        i128::MAX
    })
}

/// Python's `int(str)` as pydantic's lax mode applies it.
fn python_int_str(s: &str) -> Option<i128> {
    let s = s.trim();
    let (sign, digits) = match s.as_bytes().first() {
        Some(b'-') => (-1, &s[1..]),
        Some(b'+') => (1, &s[1..]),
        _ => (1, s),
    };
    // A fraction of zeros only: "5.0", "5.00".
    let digits = match digits.split_once('.') {
        Some((int, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => int,
        Some(_) => return None,
        None => digits,
    };
    let bytes = digits.as_bytes();
    if bytes.is_empty()
        || !bytes.iter().all(|b| b.is_ascii_digit() || *b == b'_')
        || bytes[0] == b'_'
        || bytes[bytes.len() - 1] == b'_'
        || digits.contains("__")
    {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    Some(sign * parse_saturating(&clean))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::canonical::json::parse;

    fn v(text: &str) -> Value {
        parse(&Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    #[test]
    fn booleans_as_go_reads_them() {
        assert_eq!(boolean(Decoder::Go, &v("true")), Ok(Some(true)));
        assert_eq!(boolean(Decoder::Go, &v("null")), Ok(None));
        for refused in ["\"true\"", "1", "0", "\"yes\"", "[]"] {
            assert_eq!(boolean(Decoder::Go, &v(refused)), Err(Refused), "{refused}");
        }
    }

    #[test]
    fn booleans_as_pydantic_reads_them() {
        // The table measured against pydantic 2.14.
        for (text, want) in [
            ("true", Some(true)),
            ("false", Some(false)),
            ("1", Some(true)),
            ("0", Some(false)),
            ("1.0", Some(true)),
            ("-0.0", Some(false)),
            ("\"true\"", Some(true)),
            ("\"TRUE\"", Some(true)),
            ("\"FaLsE\"", Some(false)),
            ("\"yes\"", Some(true)),
            ("\"oN\"", Some(true)),
            ("\"t\"", Some(true)),
            ("\"n\"", Some(false)),
            ("\"0\"", Some(false)),
            ("null", None),
        ] {
            assert_eq!(boolean(Decoder::Pydantic, &v(text)), Ok(want), "{text}");
        }
        for refused in ["2", "1.5", "\" true\"", "\"\"", "\"ye\"", "{}"] {
            assert_eq!(
                boolean(Decoder::Pydantic, &v(refused)),
                Err(Refused),
                "{refused}"
            );
        }
    }

    #[test]
    fn integers_as_each_decoder_reads_them() {
        assert_eq!(integer(Decoder::Go, &v("5")), Ok(Some(5)));
        assert_eq!(integer(Decoder::Go, &v("-5")), Ok(Some(-5)));
        for refused in [
            "5.0",
            "1e3",
            "5E0",
            "-0.0",
            "\"5\"",
            "true",
            "99999999999999999999",
        ] {
            assert_eq!(integer(Decoder::Go, &v(refused)), Err(Refused), "{refused}");
        }
        for (text, want) in [
            ("5", 5),
            ("5.0", 5),
            ("1e3", 1000),
            ("true", 1),
            ("\"5\"", 5),
            ("\" 5 \"", 5),
            ("\"+5\"", 5),
            ("\"-5.00\"", -5),
            ("\"5_000\"", 5000),
            ("\"1_0.0\"", 10),
            ("\"05\"", 5),
        ] {
            assert_eq!(
                integer(Decoder::Pydantic, &v(text)),
                Ok(Some(want)),
                "{text}"
            );
        }
        for refused in [
            "5.5", "1e400", "\"5.5\"", "\"1e3\"", "\"5.\"", "\"_5\"", "\"5__0\"", "\"0x10\"", "[]",
        ] {
            assert_eq!(
                integer(Decoder::Pydantic, &v(refused)),
                Err(Refused),
                "{refused}"
            );
        }
    }

    #[test]
    fn decided_integers_are_written_back_saturated_to_the_64_bit_range() {
        for (n, text) in [
            (5, "5"),
            (-5, "-5"),
            (i128::from(i64::MAX) + 1, "9223372036854775808"),
            (i128::from(u64::MAX), "18446744073709551615"),
            (i128::from(u64::MAX) + 1, "18446744073709551615"),
            (i128::MAX, "18446744073709551615"),
            (i128::from(i64::MIN) - 1, "-9223372036854775808"),
            (i128::MIN, "-9223372036854775808"),
        ] {
            assert_eq!(number_of(n), v(text), "{n}");
        }
    }

    #[test]
    fn ollama_options_truncate() {
        assert_eq!(ollama_option_int(&v("5.9")), Ok(Some(5)));
        assert_eq!(ollama_option_int(&v("-1")), Ok(Some(-1)));
        assert_eq!(ollama_option_int(&v("1e300")), Err(Refused));
        // Past 9.2e18 (the int64 range ends at 9.22e18) Go's conversion is
        // platform-defined: refused from exactly there.
        assert_eq!(
            ollama_option_int(&v("9.1e18")),
            Ok(Some(9_100_000_000_000_000_000))
        );
        assert_eq!(ollama_option_int(&v("9.2e18")), Err(Refused));
        assert_eq!(ollama_option_int(&v("-9.2e18")), Err(Refused));
        // Ollama skips a null option: the engine's default applies.
        assert_eq!(ollama_option_int(&v("null")), Ok(None));
        assert_eq!(ollama_option_int(&v("\"5\"")), Err(Refused));
        assert_eq!(token_bound(Some(-1)), None);
        assert_eq!(token_bound(Some(0)), None);
        assert_eq!(token_bound(Some(7)), Some(7));
        assert_eq!(token_bound(Some(i128::MAX)), Some(u64::MAX));
    }
}
