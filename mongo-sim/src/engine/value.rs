//! BSON value ordering and equality the way MongoDB compares values, so that
//! filters, sorts and `_id` uniqueness agree with a real server (numbers of
//! different BSON types compare by value, types sort in canonical order).

use std::cmp::Ordering;

use bson::Bson;

/// MongoDB's canonical type order: values of different classes never compare
/// equal and sort by class first.
pub(crate) fn type_class(value: &Bson) -> u8 {
    match value {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::JavaScriptCodeWithScope(_) => 14,
        Bson::MaxKey => 15,
    }
}

/// A number as f64 for cross-type numeric comparison (Decimal128 is not
/// produced by our tests; it compares as NaN-free zero to stay total).
fn as_f64(value: &Bson) -> f64 {
    match value {
        Bson::Int32(v) => f64::from(*v),
        Bson::Int64(v) => *v as f64,
        Bson::Double(v) => *v,
        _ => 0.0,
    }
}

/// Total order over BSON values following MongoDB's comparison rules.
pub(crate) fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ca, cb) = (type_class(a), type_class(b));
    if ca != cb {
        return ca.cmp(&cb);
    }
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => i64::from(*x).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&i64::from(*y)),
        _ if ca == 2 => as_f64(a).total_cmp(&as_f64(b)),
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => x.cmp(y),
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => compare_arrays(x, y),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => x.cmp(y),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .as_str()
            .cmp(y.pattern.as_str())
            .then(x.options.as_str().cmp(y.options.as_str())),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

fn compare_documents(x: &bson::Document, y: &bson::Document) -> Ordering {
    let mut left = x.iter();
    let mut right = y.iter();
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let order = type_class(va)
                    .cmp(&type_class(vb))
                    .then_with(|| ka.cmp(kb))
                    .then_with(|| compare(va, vb));
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn compare_arrays(x: &[Bson], y: &[Bson]) -> Ordering {
    for (a, b) in x.iter().zip(y) {
        let order = compare(a, b);
        if order != Ordering::Equal {
            return order;
        }
    }
    x.len().cmp(&y.len())
}

/// MongoDB equality: `1`, `1.0` and `NumberLong(1)` are the same value.
pub(crate) fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

/// A hashable key for `_id` uniqueness that treats equal numbers of
/// different BSON types as the same key, as the `_id_` index does.
pub(crate) fn id_key(id: &Bson) -> String {
    match id {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
            let number = as_f64(id);
            if number.fract() == 0.0 && number.abs() < 9.0e15 {
                format!("n:{}", number as i64)
            } else if let Bson::Int64(v) = id {
                format!("n:{v}")
            } else {
                format!("n:{number}")
            }
        }
        Bson::Document(doc) => {
            let parts: Vec<String> = doc
                .iter()
                .map(|(k, v)| format!("{k}={}", id_key(v)))
                .collect();
            format!("d:{{{}}}", parts.join(","))
        }
        Bson::Array(items) => {
            let parts: Vec<String> = items.iter().map(id_key).collect();
            format!("a:[{}]", parts.join(","))
        }
        other => format!(
            "{}:{}",
            type_class(other),
            other.clone().into_canonical_extjson()
        ),
    }
}

/// Whether a value is a number of any BSON numeric type.
pub(crate) fn is_number(value: &Bson) -> bool {
    type_class(value) == 2 && !matches!(value, Bson::Decimal128(_))
}

/// A BSON number as i64 when it is integral (array indexes, limits, flags).
pub(crate) fn as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

/// MongoDB's truthiness for option flags (`upsert: 1`, `multi: true`, ...).
pub(crate) fn is_truthy(value: Option<&Bson>) -> bool {
    match value {
        None | Some(Bson::Null) | Some(Bson::Undefined) => false,
        Some(Bson::Boolean(b)) => *b,
        Some(v) if is_number(v) => as_f64(v) != 0.0,
        Some(_) => true,
    }
}

/// Adds two numbers with MongoDB's type promotion (int32 overflows to int64,
/// anything with a double is a double).
pub(crate) fn add_numbers(a: &Bson, b: &Bson) -> Option<Bson> {
    Some(match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => match x.checked_add(*y) {
            Some(sum) => Bson::Int32(sum),
            None => Bson::Int64(i64::from(*x) + i64::from(*y)),
        },
        (Bson::Int64(x), Bson::Int32(y)) | (Bson::Int32(y), Bson::Int64(x)) => {
            Bson::Int64(x.checked_add(i64::from(*y))?)
        }
        (Bson::Int64(x), Bson::Int64(y)) => Bson::Int64(x.checked_add(*y)?),
        _ if is_number(a) && is_number(b) => Bson::Double(as_f64(a) + as_f64(b)),
        _ => return None,
    })
}

/// Multiplies two numbers with the same promotion rules as [`add_numbers`].
pub(crate) fn multiply_numbers(a: &Bson, b: &Bson) -> Option<Bson> {
    Some(match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => match x.checked_mul(*y) {
            Some(product) => Bson::Int32(product),
            None => Bson::Int64(i64::from(*x) * i64::from(*y)),
        },
        (Bson::Int64(x), Bson::Int32(y)) | (Bson::Int32(y), Bson::Int64(x)) => {
            Bson::Int64(x.checked_mul(i64::from(*y))?)
        }
        (Bson::Int64(x), Bson::Int64(y)) => Bson::Int64(x.checked_mul(*y)?),
        _ if is_number(a) && is_number(b) => Bson::Double(as_f64(a) * as_f64(b)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_across_types() {
        let cases = [
            (Bson::Int32(1), Bson::Double(1.0), Ordering::Equal),
            (Bson::Int64(2), Bson::Int32(3), Ordering::Less),
            (Bson::Double(2.5), Bson::Int64(2), Ordering::Greater),
            (Bson::Null, Bson::Int32(0), Ordering::Less),
            (Bson::String("a".into()), Bson::Int32(9), Ordering::Greater),
            (
                Bson::Timestamp(bson::Timestamp {
                    time: 5,
                    increment: 2,
                }),
                Bson::Timestamp(bson::Timestamp {
                    time: 5,
                    increment: 1,
                }),
                Ordering::Greater,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(&a, &b), want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn id_keys_unify_numeric_types() {
        assert_eq!(id_key(&Bson::Int32(7)), id_key(&Bson::Int64(7)));
        assert_eq!(id_key(&Bson::Int32(7)), id_key(&Bson::Double(7.0)));
        assert_ne!(id_key(&Bson::Int32(7)), id_key(&Bson::String("7".into())));
    }

    #[test]
    fn addition_promotes_like_mongodb() {
        assert_eq!(
            add_numbers(&Bson::Int32(1), &Bson::Int32(2)),
            Some(Bson::Int32(3))
        );
        assert_eq!(
            add_numbers(&Bson::Int32(i32::MAX), &Bson::Int32(1)),
            Some(Bson::Int64(i64::from(i32::MAX) + 1))
        );
        assert_eq!(
            add_numbers(&Bson::Int32(1), &Bson::Double(0.5)),
            Some(Bson::Double(1.5))
        );
        assert_eq!(
            add_numbers(&Bson::String("x".into()), &Bson::Int32(1)),
            None
        );
    }
}
