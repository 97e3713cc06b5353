//! Generators of transform specs for property tests.

use proptest::prelude::*;
use serde_json::{json, Value};

/// Spec JSON covering every resize mode, every crop mode and flips. A few
/// combinations do not validate (a centre crop larger than a fixed resize);
/// property tests `prop_assume!` that parsing succeeds.
pub fn any_spec() -> impl Strategy<Value = Value> {
    let side = 1u32..300;
    let resize = prop_oneof![
        side.clone()
            .prop_map(|s| json!({"mode": "shorter_side", "size": s})),
        side.clone()
            .prop_map(|s| json!({"mode": "longer_side", "size": s})),
        (side.clone(), side.clone())
            .prop_map(|(h, w)| json!({"mode": "exact", "height": h, "width": w})),
        (side.clone(), side.clone(), 0u8..=255)
            .prop_map(|(h, w, p)| json!({"mode": "fit", "height": h, "width": w, "pad_value": p})),
        Just(json!({"mode": "none"})),
    ];
    let crop = prop_oneof![
        Just(Value::Null),
        (side.clone(), side.clone())
            .prop_map(|(h, w)| json!({"mode": "center", "height": h, "width": w})),
        (-500i32..500, -500i32..500, side.clone(), side.clone()).prop_map(
            |(t, l, h, w)| json!({"mode": "box", "top": t, "left": l, "height": h, "width": w})
        ),
    ];
    let rrc = (
        side.clone(),
        side,
        0.01f64..1.0,
        0.0f64..1.0,
        0.1f64..3.0,
        1.0f64..4.0,
    )
        .prop_map(|(h, w, s0, s1, r0, r1)| {
            json!({"mode": "random_resized_crop", "height": h, "width": w,
                   "scale": [s0, s0 + (1.0 - s0) * s1], "ratio": [r0, r0 * r1]})
        });
    let flip = (0.0f64..=1.0, 0.0f64..=1.0);
    prop_oneof![
        (resize, crop).prop_map(|(r, c)| json!({"resize": r, "crop": c})),
        rrc.prop_map(|c| json!({"resize": {"mode": "none"}, "crop": c})),
    ]
    .prop_flat_map(move |v| {
        flip.clone().prop_map(move |(h, w)| {
            let mut v = v.clone();
            v["flip"] = json!({"horizontal_p": h, "vertical_p": w});
            v
        })
    })
}
