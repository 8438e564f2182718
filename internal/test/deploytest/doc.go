// Package deploytest tests what the repository ships for running Converge
// outside Go code: the GitHub Action (action.yml, action/), the GitLab CI
// template (deploy/gitlab), the container image (Containerfile), the
// Grafana dashboard (deploy/grafana-dashboard.json) and the systemd unit
// (deploy/converge.service); deploy/haproxy.cfg is run by the cluster
// tests in internal/test/e2e. Each is run or read as its user would: the
// Action's scripts with the environment GitHub sets, the template's
// script lines in a POSIX shell, the image built with podman, the
// dashboard's queries against a real server's /metrics, the unit's
// command and environment as systemd would start them; all against real
// servers on 127.0.0.1:0 and real ssh. It has no non-test code.
package deploytest
