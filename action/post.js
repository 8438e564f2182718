'use strict';
// The GitHub Action's post step: with detached: true, wait while someone is connected.
require('./run.js')('post');
