// Writes proto/kms/v1/api.json (src/client/descriptor.ts) from the .proto files. Run after changing
// them: `npx tsc -p tsconfig.json && node dist/scripts/gen-api-descriptor.js`.

import fs from 'node:fs';
import path from 'node:path';
import { DESCRIPTOR_FILE, buildApiDescriptor, findProtoDir } from '../src/client/descriptor';

const file = path.join(findProtoDir(), DESCRIPTOR_FILE);
fs.writeFileSync(file, JSON.stringify(buildApiDescriptor(), null, 1) + '\n');
process.stdout.write(`wrote ${file}\n`);
