"""The papers' equations, each in one place: the random walk over learned affinities
(PSA), the dense CRF, CAMs into label maps, HFPL's sampling and similarity loss, WS-FCN's
pseudo ground truth and loss with PAMR, inference at several scales, and the scores."""
