//! `l2d info`: what libtorch and the machine offer.

mod common;
use common::*;

#[test]
fn info_json_reports_libtorch_and_devices() {
    let v: serde_json::Value = serde_json::from_str(&ok(l2d(&["info", "--json"]))).unwrap();
    assert!(v["libtorch_version"].as_str().unwrap().starts_with("2.11.0"), "{v}");
    assert_eq!(v["cuda_available"], tch::Cuda::is_available());
    assert_eq!(v["devices"].as_array().unwrap().len(), tch::Cuda::device_count() as usize);
    assert!(v["cpu_threads"].as_i64().unwrap() >= 1);
    assert!(v["cpu_count"].as_u64().unwrap() >= 1);
    let text = ok(l2d(&["info"]));
    assert!(text.contains("libtorch   2.11.0"), "{text}");
}
