#!/usr/bin/env node
require('../dist/src/cli/kmsctl.js').main();
