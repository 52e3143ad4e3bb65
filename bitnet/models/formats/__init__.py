"""GGUF files: writing (`writer`), reading (`reader`), checking (`check`), ternary packing (`packing`),
and microsoft's I2_S layout (`i2s`)."""
