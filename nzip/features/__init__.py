"""Lossy codecs for features and images: gear (training-free), and the learned codecs on
CompressAI (image-hyperprior, feature-hyperprior) with their shipped weights (weights/).
The codecs register themselves with nzip.codecs; torch and CompressAI load on first use."""
