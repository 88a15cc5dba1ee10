variable "service" {
  description = "The service's name: the Service tag, and the secret <service>_env_<environment>"
  type        = string
}

variable "environment" {
  description = "test, stage or prod: the Environment tag and the git branch"
  type        = string
  validation {
    condition     = contains(["test", "stage", "prod"], var.environment)
    error_message = "environment must be test, stage or prod."
  }
}

variable "repository" {
  description = "The git URL bootagent checks out (the Repository tag)"
  type        = string
}

variable "ami_id" {
  description = "An image with the bootagent package installed"
  type        = string
}

variable "instance_type" {
  type    = string
  default = "t4g.small"
}

variable "subnet_ids" {
  type = list(string)
}

variable "target_group_arns" {
  description = "Target groups whose health check is bootagent's health report (port 8081)"
  type        = list(string)
  default     = []
}

variable "kms_key_arn" {
  description = "The KMS key the environment's secrets are encrypted with"
  type        = string
}

variable "min_size" {
  type    = number
  default = 2
}

variable "max_size" {
  type    = number
  default = 6
}

variable "warm_pool_size" {
  type    = number
  default = 1
}

variable "describe_tags_fallback" {
  description = "Grant ec2:DescribeTags, for instances whose tags are not in metadata"
  type        = bool
  default     = false
}
