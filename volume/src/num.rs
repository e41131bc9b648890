//! Python's numeric semantics, for the statistics upstream computes on values read from JSON.
//!
//! The global record's bytes depend on them: an int-only sum stays an int (`"total_length": 0`), `int / int`
//! is true division, `round(int, n)` returns the int unchanged, `round(float, n)` rounds the exact binary value
//! half-to-even, and the standard deviation squares with the C library's `pow`, which is not `x * x` (§4.4 of
//! the results spec). `bool` is an `int` in Python, so `True` counts as 1.

use crate::pyjson::Value;
use std::hint::black_box;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

/// An arithmetic error Python would raise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArithError {
    #[error("division by zero")]
    ZeroDivision,
    #[error("math range error")]
    Range,
}

impl Num {
    pub const ZERO: Num = Num::Int(0);

    /// The number a JSON value stands for, as Python would use it in arithmetic.
    pub fn from_value(v: &Value) -> Option<Num> {
        match v {
            Value::Int(i) => Some(Num::Int(*i)),
            Value::Bool(b) => Some(Num::Int(*b as i64)),
            Value::Float(f) => Some(Num::Float(*f)),
            // Beyond 64 bits: Python would keep it exact; these never occur in result files.
            Value::BigInt(s) => s.parse::<f64>().ok().map(Num::Float),
            _ => None,
        }
    }

    pub fn to_value(self) -> Value {
        match self {
            Num::Int(i) => Value::Int(i),
            Num::Float(f) => Value::Float(f),
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    pub fn is_zero(self) -> bool {
        self.as_f64() == 0.0
    }

    pub fn py_add(self, o: Num) -> Num {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => a.checked_add(b).map_or(Num::Float(a as f64 + b as f64), Num::Int),
            _ => Num::Float(self.as_f64() + o.as_f64()),
        }
    }

    pub fn py_sub(self, o: Num) -> Num {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => a.checked_sub(b).map_or(Num::Float(a as f64 - b as f64), Num::Int),
            _ => Num::Float(self.as_f64() - o.as_f64()),
        }
    }

    pub fn py_mul(self, o: Num) -> Num {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => a.checked_mul(b).map_or(Num::Float(a as f64 * b as f64), Num::Int),
            _ => Num::Float(self.as_f64() * o.as_f64()),
        }
    }

    /// Python's true division `/`: always a float, and zero divisors raise.
    pub fn py_div(self, o: Num) -> Result<Num, ArithError> {
        if o.is_zero() {
            return Err(ArithError::ZeroDivision);
        }
        Ok(Num::Float(self.as_f64() / o.as_f64()))
    }

    /// `round(x, digits)`.
    pub fn round(self, digits: usize) -> Num {
        match self {
            Num::Int(_) => self,
            Num::Float(f) => Num::Float(round_f64(f, digits)),
        }
    }

    /// Python `==` between numbers.
    pub fn py_eq(self, o: Num) -> bool {
        match (self, o) {
            (Num::Int(a), Num::Int(b)) => a == b,
            _ => self.as_f64() == o.as_f64(),
        }
    }
}

/// `round(x, digits)` on a float: the exact binary value rounded half-to-even, parsed back.
/// Rust's `{:.N}` formats the exact value with ties to even, which is what CPython does.
pub fn round_f64(f: f64, digits: usize) -> f64 {
    if !f.is_finite() {
        return f;
    }
    format!("{f:.digits$}").parse().unwrap_or(f)
}

/// `'{:.3f}'.format(x)`.
pub fn format_3f(n: Num) -> String {
    let f = n.as_f64();
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{f:.3}")
    }
}

/// `math.pow(x, 2)` through the C library, as CPython calls it.
///
/// LLVM rewrites `powf(2.0)` with a constant exponent into `x * x` in optimised builds, which differs from glibc's
/// `pow` in the last bit for about 0.08% of inputs; the black box keeps the library call.
pub fn pow2(x: Num) -> Result<f64, ArithError> {
    let x = x.as_f64();
    let r = x.powf(black_box(2.0));
    if r.is_infinite() && x.is_finite() {
        return Err(ArithError::Range);
    }
    Ok(r)
}

/// `math.sqrt(x)`.
pub fn sqrt(x: f64) -> Result<f64, ArithError> {
    if x < 0.0 {
        return Err(ArithError::Range);
    }
    Ok(x.sqrt())
}

/// Python's `int(text)` for the ASCII forms upstream meets in route ids: surrounding whitespace, a sign, and
/// single underscores between digits (`int("1_0") == 10`).
pub fn py_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let mut n: i64 = 0;
    for b in digits.bytes() {
        match b {
            b'_' => continue,
            b'0'..=b'9' => n = n.checked_mul(10)?.checked_add((b - b'0') as i64)?,
            _ => return None,
        }
    }
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_is_half_even_on_the_exact_value() {
        assert_eq!(round_f64(2.675, 2), 2.67);
        assert_eq!(round_f64(0.125, 2), 0.12);
        assert_eq!(round_f64(0.375, 2), 0.38);
        assert_eq!(Num::Int(100).round(6), Num::Int(100));
    }

    #[test]
    fn int_sums_stay_int_until_a_float_arrives() {
        let s = Num::ZERO.py_add(Num::Int(2)).py_add(Num::Int(3));
        assert_eq!(s, Num::Int(5));
        assert_eq!(s.py_add(Num::Float(0.0)), Num::Float(5.0));
        assert_eq!(Num::Int(100).py_div(Num::Int(2)), Ok(Num::Float(50.0)));
        assert_eq!(Num::Int(1).py_div(Num::Float(0.0)), Err(ArithError::ZeroDivision));
    }

    #[test]
    fn pow_goes_through_libm() {
        // The example of the results spec, §4.4: glibc's pow differs from x*x here.
        let x = 591.7192956813892_f64;
        assert_eq!(pow2(Num::Float(x)).unwrap(), 350131.72488167934);
        assert_ne!(x * x, 350131.72488167934);
    }

    #[test]
    fn python_int_parsing() {
        assert_eq!(py_int("12"), Some(12));
        assert_eq!(py_int(" -3 "), Some(-3));
        assert_eq!(py_int("1_0"), Some(10));
        for bad in ["", "x", "1__0", "_1", "1_", "1.0", "+", "99999999999999999999"] {
            assert_eq!(py_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_3f_like_python() {
        assert_eq!(format_3f(Num::Int(0)), "0.000");
        assert_eq!(format_3f(Num::Float(51.5955)), "51.596");
        assert_eq!(format_3f(Num::Float(1.0005)), "1.000");
        assert_eq!(format_3f(Num::Float(0.0005)), "0.001");
        assert_eq!(format_3f(Num::Float(f64::NAN)), "nan");
    }
}
