"""Click-through prediction: ad impressions (events) joined with clicks (labels).

An impression waits up to 30 minutes for its click; one without a click by then is a
negative example (click-through joiners do the same). Run it with:

    ct-stream validate topologies/clicks.py
    ct-stream demo --topology topologies/clicks.py
"""

from river import compose, linear_model, optim, preprocessing

from ct_stream.topology import Topology

topology = Topology(
    name="clicks",
    events_topic="clicks.impressions",
    labels_topic="clicks.clicks",
    id_field="impression_id",
    ts_field="ts",
    features={
        "bid_price": "float",
        "position": "int",
        "is_mobile": "bool",
        "country": "str",
        "hour_of_day": "int",
    },
    label_type="binary",
    partitions=6,
    join={
        "max_label_delay": "30m",
        "grace": "30s",
        "idle_timeout": "30s",
        "timeout_policy": "negative",
        "default_label": False,
        "max_pending": 2_000_000,
    },
    model={
        # Numbers scaled, the flag passed through, the country one-hot encoded.
        "estimator": (
            (compose.Select("bid_price", "position", "hour_of_day") | preprocessing.StandardScaler())
            + compose.Select("is_mobile")
            + (compose.Select("country") | preprocessing.OneHotEncoder())
        )
        | linear_model.LogisticRegression(optimizer=optim.SGD(0.05)),
    },
    drift={"concept_detector": "adwin", "data_method": "psi", "data_threshold": 0.2},
    retrain={"every_examples": 500_000, "every_seconds": "1h", "on_drift": True, "cooldown": "10m"},
    gate={"metric": "log_loss", "holdout_size": 20_000, "min_samples": 5_000, "alpha": 0.01},
    publish={"inline_max_bytes": "900KB", "online_every": "5m"},
    serving={"canary_fraction": 0.05, "shadow": False, "canary_min_labels": 2_000},
)
