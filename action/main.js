'use strict';
// The GitHub Action's main step: download, start, tell how to connect.
require('./run.js')('main');
