"""Image steps between a medical image and the model: slicing a volume into planes
(:mod:`.slicing`), normalising and letterboxing a plane for the encoder
(:mod:`.preprocess`), and cleaning a decoded mask (:mod:`.postprocess`)."""
