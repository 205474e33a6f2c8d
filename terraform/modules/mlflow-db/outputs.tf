output "address" {
  description = "Host name of the DB instance (follows Multi-AZ failover)"
  value       = aws_db_instance.this.address
}

output "port" {
  description = "TCP port of PostgreSQL"
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Database MLflow uses"
  value       = aws_db_instance.this.db_name
}

output "username" {
  description = "User MLflow connects as"
  value       = aws_db_instance.this.username
}

output "password" {
  description = "Password of that user"
  value       = random_password.master.result
  sensitive   = true
}

output "backend_store_uri" {
  description = "mlflow server --backend-store-uri: postgresql://user:password@host:5432/db?sslmode=require"
  value       = "postgresql://${aws_db_instance.this.username}:${random_password.master.result}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/${aws_db_instance.this.db_name}?sslmode=require"
  sensitive   = true
}

output "security_group_id" {
  description = "ID of the security group attached to the DB instance"
  value       = aws_security_group.this.id
}
