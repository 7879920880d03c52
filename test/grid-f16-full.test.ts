// The shape grid of PRODUCT.md on every backend: f16, causal off, both layouts.
import { registerGrid } from './spec.js';

registerGrid('f16', false);
