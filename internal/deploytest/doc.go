// Package deploytest tests what the repository ships for running Converge
// outside Go code: the GitHub Action (action.yml, action/), the GitLab CI
// template (deploy/gitlab), the container image (Containerfile) and the
// Grafana dashboard (deploy/grafana-dashboard.json). Each is run or read
// as its user would: the Action's scripts with the environment GitHub
// sets, the template's script lines in a POSIX shell, the image built with
// podman, the dashboard's queries against a real server's /metrics; all
// against real servers on 127.0.0.1:0 and real ssh. It has no non-test
// code.
package deploytest
