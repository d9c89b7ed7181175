#!/usr/bin/env node
// Azurite's blob service, started as its own `azurite-blob` command starts it, but with the
// periodic garbage collection of its extents off (backends/azure/service.py says why).
"use strict";

const constants = require("azurite/dist/src/blob/utils/constants");

// The longest delay a Node timer keeps (a longer one fires at once): about 24.8 days.
constants.DEFAULT_GC_INTERVAL_MS = 2147483647;
require("azurite/dist/src/blob/main");
