// The shape grid of PRODUCT.md on every backend: f16, causal on, both layouts.
import { registerGrid } from './spec.js';

registerGrid('f16', true);
