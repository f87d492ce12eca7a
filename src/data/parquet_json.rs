//! Parquet record values as JSON, the form every reader here consumes.

use serde_json::Value;

/// A Parquet value as JSON; types no benchmark uses (dates, decimals) become null.
pub fn to_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match field {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Byte(n) => Value::from(*n),
        F::Short(n) => Value::from(*n),
        F::Int(n) => Value::from(*n),
        F::Long(n) => Value::from(*n),
        F::UByte(n) => Value::from(*n),
        F::UShort(n) => Value::from(*n),
        F::UInt(n) => Value::from(*n),
        F::ULong(n) => Value::from(*n),
        F::Float(x) => Value::from(*x as f64),
        F::Double(x) => Value::from(*x),
        F::Str(s) => Value::String(s.clone()),
        F::Bytes(b) => std::str::from_utf8(b.data()).map_or(Value::Null, |s| Value::String(s.to_owned())),
        F::Group(row) => Value::Object(row.get_column_iter().map(|(k, f)| (k.clone(), to_json(f))).collect()),
        F::ListInternal(list) => Value::Array(list.elements().iter().map(to_json).collect()),
        F::MapInternal(map) => Value::Array(
            map.entries().iter().map(|(k, v)| Value::Array(vec![to_json(k), to_json(v)])).collect(),
        ),
        _ => Value::Null,
    }
}
