'use strict';
// Starts action/converge.sh for one step of the GitHub Action (main or
// post) and exits with its status. Plain Node, no packages: the script does
// the work. GitHub passes the inputs as INPUT_<NAME> with the name upper
// cased and its hyphens kept, which a shell cannot read, so each is also
// passed with hyphens as underscores (INPUT_LIMIT_ACCESS_TO_ACTOR).
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

module.exports = function run(step) {
  const env = { ...process.env };
  for (const [name, value] of Object.entries(process.env)) {
    if (name.startsWith('INPUT_') && name.includes('-')) {
      env[name.replace(/-/g, '_')] = value;
    }
  }
  const script = path.join(__dirname, 'converge.sh');
  const r = spawnSync(bash(), [script, step], { stdio: 'inherit', env });
  if (r.error) {
    // A debugging aid must never fail the job: warn, and let it go on.
    console.log(`::warning title=Converge::cannot run ${script} with bash: ${r.error.message}; the job goes on without a shell into it`);
    process.exit(0);
  }
  process.exit(r.status === null ? 1 : r.status);
};

// bash is Git Bash on Windows (where "bash" on the PATH may be WSL's),
// else the bash on the PATH.
function bash() {
  if (process.platform !== 'win32') {
    return 'bash';
  }
  const git = path.join(process.env.ProgramFiles || 'C:\\Program Files', 'Git', 'bin', 'bash.exe');
  return fs.existsSync(git) ? git : 'bash';
}
