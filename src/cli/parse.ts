/** Parsers for command-line option values: each returns the value or throws commander's InvalidArgumentError. */
import { InvalidArgumentError } from 'commander';
import type { SweepAxis } from './results.js';
import { SWEEP_AXES } from './suites.js';

/** A positive safe integer, written in decimal digits only ("64"; not "6.4e1", "0x40" or "64abc"). */
export function parsePositiveInt(value: string): number {
  const s = value.trim();
  if (!/^\d+$/.test(s)) throw new InvalidArgumentError('It must be a positive integer.');
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('It must be a positive integer.');
  return n;
}

/** A non-negative integer below 2^32 (a PRNG seed). */
export function parseSeed(value: string): number {
  const s = value.trim();
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(n) || n >= 2 ** 32) {
    throw new InvalidArgumentError('It must be an integer from 0 to 4294967295.');
  }
  return n;
}

/** A comma-separated list of positive integers ("256,1024,4096"); order kept, duplicates dropped. */
export function parseIntList(value: string): number[] {
  const parts = value.split(',').map((p) => p.trim());
  if (parts.some((p) => p === '')) {
    throw new InvalidArgumentError('It must be comma-separated positive integers, such as 256,1024,4096.');
  }
  const ns = parts.map((p) => {
    try {
      return parsePositiveInt(p);
    } catch {
      throw new InvalidArgumentError(`'${p}' is not a positive integer.`);
    }
  });
  return [...new Set(ns)];
}

/** A comma-separated list of sweep axes ("N,D"), any case; order kept, duplicates dropped. */
export function parseAxes(value: string): SweepAxis[] {
  const axes = value.split(',').map((p) => {
    const a = SWEEP_AXES.find((x) => x.toLowerCase() === p.trim().toLowerCase());
    if (!a) throw new InvalidArgumentError(`'${p.trim()}' is not one of ${SWEEP_AXES.join(', ')}.`);
    return a;
  });
  return [...new Set(axes)];
}

/** A positive finite number in decimal ("4800", "3350.5"). */
export function parsePositiveNumber(value: string): number {
  const s = value.trim();
  const n = Number(s);
  if (!/^\d+(\.\d+)?$/.test(s) || !Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('It must be a positive number.');
  return n;
}
