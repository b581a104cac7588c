//! longtail: long-tailed image classification with multi-expert ensembles.
