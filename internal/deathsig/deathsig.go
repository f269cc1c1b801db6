// Package deathsig starts child processes that the kernel kills when this
// process ends, so that none outlives an interrupted run.
package deathsig
