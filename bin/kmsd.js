#!/usr/bin/env node
require('../dist/src/cli/kmsd.js');
