// The shape grid of PRODUCT.md on every backend: f32, causal on, both layouts.
import { registerGrid } from './spec.js';

registerGrid('f32', true);
