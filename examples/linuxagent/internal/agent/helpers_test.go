package agent

import "github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"

func backupRequest(device, target string) agentapi.BackupRequest {
	return agentapi.BackupRequest{Device: device, Target: target, Mode: agentapi.Full}
}
