"""Model configs every mixer-level model test runs: one per mixer, memory and segmentation."""

TINY = {"vocab_size": 37, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2}
MIXERS = {
    "attention": {"mixer": "attention"},
    "attention-conv": {"mixer": "attention", "attention_conv_size": 3},
    "base": {},
    "grm": {"segment_size": 4, "aggregation": "grm"},
    "ssc-sum": {"segment_size": 3, "aggregation": "ssc", "ssc_top_k": 1, "pooling": "sum"},
    "log-grm": {"segmentation": "log", "aggregation": "grm"},
    "swla-log": {"memory": "swla", "segmentation": "log", "aggregation": "grm"},
    "swla-independent": {"memory": "swla", "segment_size": 4, "init": "independent"},
    "dla-soup": {"memory": "dla", "segment_size": 4, "aggregation": "soup", "memory_expansion": 2},
    "titans-grm": {"memory": "titans", "segment_size": 4, "memory_expansion": 2},
    "hybrid": {"segment_size": 4, "layer_mixers": ["mc", "attention"]},
}
