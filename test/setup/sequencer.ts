// The order files start in. Larger files first (the longer ones, mostly), as vitest's own
// sequencer does without a cache, but the opencryptoki project's files spread evenly among the
// others instead of forming a group of their own: they take turns on the machine-wide token
// (test/setup/opencryptoki-turn.ts), and run as a group after everything else they kept one of the
// two workers idle for two minutes.

import fs from 'node:fs';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

export class SpreadOpencryptoki extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sizes = new Map(files.map((f) => [f.moduleId, fs.statSync(f.moduleId).size]));
    const largerFirst = (a: TestSpecification, b: TestSpecification): number => sizes.get(b.moduleId)! - sizes.get(a.moduleId)! || a.moduleId.localeCompare(b.moduleId) || a.project.name.localeCompare(b.project.name);
    const ock = files.filter((f) => f.project.name === 'opencryptoki').sort(largerFirst);
    const rest = files.filter((f) => f.project.name !== 'opencryptoki').sort(largerFirst);
    const every = Math.max(1, Math.floor(rest.length / (ock.length + 1)));
    const out: TestSpecification[] = [];
    rest.forEach((f, i) => {
      out.push(f);
      if ((i + 1) % every === 0 && ock.length > 0) out.push(ock.shift()!);
    });
    return [...out, ...ock];
  }
}
