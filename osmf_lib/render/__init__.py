"""Creative rendering (DESIGN 6.8): the product placed on a canvas, a background painted around it
by a ControlNet-inpainting diffusion pipeline, the product's own pixels laid back on top."""
